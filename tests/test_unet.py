"""The U-Net: parameter count, option shapes, bf16, the ADM/Imagen options' effect, and a weight
mapping that reproduces diffusers' UNet2DModel exactly."""
import math
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.models import convert
from diffusion.models.unet import UNet

TINY = dict(out_channels=2, image_size=8, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(4,), dropout=0.0, norm_groups=8)


def init(model, batch=2, size=None, channels=1, **call):
    size = size or model.image_size
    x = jax.random.normal(jax.random.key(1), (batch, size, size, channels))
    t = jnp.arange(batch) * 37
    params = model.init(jax.random.key(0), x, t, **call)["params"]
    return params, x, t


def count(params):
    return sum(a.size for a in jax.tree.leaves(params))


def test_ddpm_cifar10_has_the_papers_parameter_count():
    shapes = jax.eval_shape(UNet().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,), jnp.int32))
    assert count(shapes) == 35_746_307


@pytest.mark.parametrize("options", [
    {}, {"num_heads": 2}, {"num_head_channels": 8}, {"resblock_updown": True},
    {"scale_shift_norm": True}, {"rescale_residual": True}, {"scale_skip": True},
    {"efficient": True, "num_res_blocks": (1, 2)}, {"num_classes": 3}, {"context_dim": 5},
    {"remat": True}, {"attention_resolutions": (8, 4)},
    {"resblock_updown": True, "scale_shift_norm": True, "rescale_residual": True, "num_head_channels": 8},
])
def test_every_option_keeps_the_shape(options):
    model = UNet(**{**TINY, **options})
    call = {}
    if options.get("num_classes"):
        call["labels"] = jnp.array([0, 3])
    if options.get("context_dim"):
        call["context"] = jnp.ones((2, 4, 5))
    params, x, t = init(model, **call)
    out = model.apply({"params": params}, x, t, **call)
    assert out.shape == (2, 8, 8, 2) and out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))


def test_scale_shift_norm_doubles_the_embedding_projection():
    plain, _, _ = init(UNet(**TINY))
    ada, _, _ = init(UNet(**TINY, scale_shift_norm=True))
    for name, block in plain.items():
        if "time_emb_proj" in block:
            assert ada[name]["time_emb_proj"]["kernel"].shape[1] == 2 * block["time_emb_proj"]["kernel"].shape[1]


def test_rescale_residual_divides_each_block_by_sqrt2():
    from diffusion.models.layers import ResBlock
    x, emb = jax.random.normal(jax.random.key(0), (2, 4, 4, 8)), jnp.ones((2, 16))
    block = ResBlock(8, groups=4)
    params = block.init(jax.random.key(1), x, emb)
    scaled = ResBlock(8, groups=4, output_scale=1 / math.sqrt(2)).apply(params, x, emb)
    np.testing.assert_allclose(scaled, block.apply(params, x, emb) / math.sqrt(2), rtol=1e-5)


def test_scale_skip_scales_the_skip_inputs():
    """The first up-block resnet sees [h | skip]: with scale_skip the skip half is exactly 1/√2 of the plain one."""
    import flax.linen as nn
    plain, scaled = UNet(**TINY), UNet(**TINY, scale_skip=True)
    params, x, t = init(plain)

    def first_up_input(model):
        seen = {}

        def record(next_fun, args, kwargs, context):
            if context.module.name == "up_blocks_0_resnets_0" and context.method_name == "__call__":
                seen["x"] = args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            model.apply({"params": params}, x, t)
        return seen["x"]

    a, b = first_up_input(plain), first_up_input(scaled)
    c = a.shape[-1] // 2
    np.testing.assert_allclose(b[..., :c], a[..., :c], rtol=1e-6)
    np.testing.assert_allclose(b[..., c:], a[..., c:] / math.sqrt(2), rtol=1e-6)


def test_efficient_unet_moves_resampling_and_adds_blocks():
    params, _, _ = init(UNet(**{**TINY, "efficient": True, "num_res_blocks": (1, 3)}))
    names = set(params)
    assert {"down_blocks_1_downsamplers_0", "down_blocks_1_resnets_2", "up_blocks_0_resnets_2"} <= names
    assert "down_blocks_0_downsamplers_0" not in names and "up_blocks_0_resnets_3" not in names


def test_bfloat16_compute_stays_within_bf16_tolerance():
    model = UNet(**TINY)
    params, x, t = init(model)
    ref = model.apply({"params": params}, x, t)
    low = replace(model, dtype=jnp.bfloat16).apply({"params": params}, x, t)
    assert jax.tree.leaves(params)[0].dtype == jnp.float32
    rel = float(jnp.linalg.norm(low - ref) / jnp.linalg.norm(ref))
    assert rel < 3e-2


def test_bad_sizes_fail_at_construction():
    with pytest.raises(ValueError, match="image_size 28 cannot be halved 3 times"):
        UNet(image_size=28, channel_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="one count per level"):
        UNet(num_res_blocks=(1, 2))


def test_converter_refuses_a_mismatched_checkpoint(tmp_path):
    from safetensors.numpy import save_file
    model = UNet(**TINY)
    params, _, _ = init(model)
    path = tmp_path / "bad.safetensors"
    save_file({"conv_in.weight": np.zeros((16, 3, 3, 3), np.float32)}, str(path))
    with pytest.raises(ValueError, match=r"conv_in.weight' has shape \(16, 3, 3, 3\).*\(3, 3, 1, 16\)"):
        convert.load_diffusers_unet(path, model, image_channels=1)
    save_file({"conv_in.weight": np.zeros((16, 1, 3, 3), np.float32)}, str(path))
    with pytest.raises(ValueError, match="lacks .* parameters"):
        convert.load_diffusers_unet(path, model, image_channels=1)
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        convert.load_diffusers_unet(tmp_path / "junk.safetensors", model, image_channels=1)


def test_matches_diffusers_ddpm_cifar10(tmp_path):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from safetensors.torch import save_file
    torch.manual_seed(0)
    ref = diffusers.UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), layers_per_block=2,
        attention_head_dim=None, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False,
        freq_shift=1, dropout=0.1).eval()
    # Random init leaves GroupNorm at identity and some biases at zero: perturb every tensor.
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "unet.safetensors"
    save_file(ref.state_dict(), str(path))
    model = UNet()
    params = convert.load_diffusers_unet(path, model)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    t = np.array([10, 900])
    with torch.no_grad():
        expect = ref(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy().transpose(0, 2, 3, 1)
    got = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t)))
    rel = np.linalg.norm(got - expect) / np.linalg.norm(expect)
    assert rel < 1e-4, rel


def test_attention_backend_choice_is_cudnn_only_where_it_applies():
    """"auto" gives XLA's attention off-GPU and for float32 or heads wider than 128 channels; cuDNN's
    fused kernel only on a GPU with bf16/fp16 heads of ≤ 128 (multiple of 8) channels; a misspelt
    backend is refused by the library and by the config check."""
    from configs import mnist
    from diffusion.models.layers import attention_implementation
    from experiments import build
    gpu = jax.default_backend() == "gpu"
    assert attention_implementation("auto", 64, jnp.bfloat16) == ("cudnn" if gpu else "xla")
    assert attention_implementation("auto", 256, jnp.bfloat16) == "xla"
    assert attention_implementation("auto", 64, jnp.float32) == "xla"
    assert attention_implementation("xla", 64, jnp.bfloat16) == "xla"
    with pytest.raises(ValueError, match="'flash' is not one of"):
        attention_implementation("flash", 64, jnp.bfloat16)
    config = mnist.get_config()
    config.model.attention_implementation = "flash"
    with pytest.raises(ValueError, match="model.attention_implementation"):
        build.validate(config)


def test_nearest_upsampling_repeats_pixels_and_sums_its_gradient_over_blocks():
    """The broadcast form gives jax.image.resize's nearest-neighbour values, and its gradient is each
    2×2 block's sum of the cotangent (no scatter in the compiled gradient)."""
    from diffusion.models.layers import nearest_upsample
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 4))
    np.testing.assert_array_equal(nearest_upsample(x), jax.image.resize(x, (2, 6, 10, 4), "nearest"))
    cotangent = jax.random.normal(jax.random.key(1), (2, 6, 10, 4))
    grad = jax.grad(lambda x: jnp.sum(nearest_upsample(x) * cotangent))(x)
    np.testing.assert_allclose(grad, cotangent.reshape(2, 3, 2, 5, 2, 4).sum(axis=(2, 4)), rtol=1e-6, atol=1e-6)
    assert "scatter" not in jax.jit(jax.grad(lambda x: jnp.sum(nearest_upsample(x) ** 2))).lower(x).compile().as_text()


def test_conditioning_the_unet_was_built_for_cannot_be_left_out():
    """A U-Net initialised with an augmentation level refuses a call without one (it would skip its
    level embedding), and a context encoder without cross-attention to read it is refused."""
    from diffusion.models.conditioning import ClassTokens
    small = dict(out_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(4,), norm_groups=4, dropout=0.0)
    x, t = jnp.zeros((2, 8, 8, 1)), jnp.zeros((2,), jnp.int32)
    model = UNet(**small)
    variables = model.init(jax.random.key(0), x, t, aug_level=t)
    with pytest.raises(ValueError, match="initialised with aug_level"):
        model.apply(variables, x, t)
    with pytest.raises(ValueError, match="needs cross-attention"):
        UNet(**small, context_encoder=ClassTokens(num_classes=3, num_tokens=2, dim=8)).init(
            jax.random.key(0), x, t, labels=t)
