"""The tiny settings every test that trains shares, so their compiled programs are reused, and the
poisoned data the NaN-guard tests train on."""
import grain
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.data import pipeline
from experiments import loop


def shrink(c, steps=4):
    """A few steps of a tiny U-Net (or MLP) with a short sampler."""
    if c.model.kind == "unet":
        c.model.base_channels, c.model.channel_mult, c.model.num_res_blocks = 8, (1, 2), 1
        c.model.attention_resolutions, c.model.norm_groups = (c.data.image_size // 2,), 4
    else:
        c.model.hidden, c.model.depth = 16, 1
    c.train.batch_size, c.train.num_steps = 16, steps
    c.train.log_every, c.train.checkpoint_every, c.train.sample_every = 1, 2, 1000
    c.sample.num, c.sample.steps = 8, 2
    c.optim.warmup_steps = 2
    return c


def set_fields(c, changes: dict):
    """``c`` (a config, or a saved config read as nested dicts) with each "section.name" of ``changes`` set."""
    for field, value in changes.items():
        section, name = field.split(".")
        c[section][name] = value
    return c


def tiny_clip_config(noise_aware: bool):
    """configs/text/clip_mnist.py shrunk: a 16-wide CLIP trained 2 steps (``noise_aware``: GLIDE's noised CLIP)."""
    from configs.text import clip_mnist
    c = clip_mnist.get_config()
    c.clip.embed_dim, c.clip.image_features, c.clip.text_width = 16, (8, 16), 16
    c.clip.text_layers, c.clip.text_heads, c.clip.noise_aware = 1, 2, noise_aware
    c.clip.retrieval_examples = 40
    c.train.batch_size, c.train.num_steps, c.train.log_every, c.train.checkpoint_every = 16, 2, 1, 2
    c.data.holdout_fraction = 0.01
    c.optim.warmup_steps = 1
    return c


def tiny_text_config(module=None):
    """A text-to-image config (default configs/text/text_mnist.py) shrunk, with a 16-wide, 1-layer text encoder."""
    from configs.text import text_mnist
    c = shrink((module or text_mnist).get_config())
    c.model.context_dim, c.model.text_layers, c.model.text_heads = 16, 1, 2
    return c


def run_sample_cli(*args):
    """``python -m experiments.sample`` in this process: its flags parsed, ``main`` called."""
    from absl import flags
    from experiments import sample
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["sample", *args])
    try:
        return sample.main([])
    finally:
        flags.FLAGS.unparse_flags()


def tiny_unet(**kw):
    """An 8×8 one-channel U-Net of two levels (8 and 16 channels), attention at 4×4, no dropout."""
    from diffusion.models.unet import UNet
    return UNet(out_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), norm_groups=4, dropout=0.0, **kw)


def zeroed_params(params, part: str):
    """``params`` with every array under a module whose name contains ``part`` set to zero."""
    leaves = [jnp.zeros_like(v) if any(part in str(getattr(k, "key", k)) for k in path) else v
              for path, v in jax.tree_util.tree_flatten_with_path(params)[0]]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)


def param_leaves(state) -> list:
    """A train state's parameters as host arrays, in tree order."""
    return [np.asarray(a) for a in jax.tree.leaves(state.params)]


def same_params(a, b) -> bool:
    """Whether two train states' parameters are bitwise equal."""
    return all(np.array_equal(x, y) for x, y in zip(param_leaves(a), param_leaves(b), strict=True))


def assert_same_params(a, b):
    """Two train states' parameters bitwise equal."""
    for x, y in zip(param_leaves(a), param_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def poison_batches_at(monkeypatch, step: int):
    """Make every training step see NaN images at ``step`` (the NaN guard's trigger): the step
    functions ``loop.jit_step`` compiles multiply the batch's images by NaN when ``state.step``
    is ``step`` (uint8 images, as the pipeline delivers them, cannot hold a NaN)."""
    real = loop.jit_step

    def poisoned(step_fn, state, mesh):
        def step_fn_poisoned(s, batch):
            return step_fn(s, dict(batch, image=batch["image"] * jnp.where(s.step == step, jnp.nan, 1.0)))
        return real(step_fn_poisoned, state, mesh)

    monkeypatch.setattr(loop, "jit_step", poisoned)


def step_batch(split, global_batch: int, step: int, seed: int = 0) -> dict:
    """Step ``step``'s whole batch of ``split`` as the training pipeline makes it (one process; uint8 images)."""
    source = pipeline.ArraySource.from_split(split)
    return pipeline.step_batches(source, global_batch=global_batch, seed=seed, shard=grain.sharding.NoSharding())[step]
