"""The toy MLP, the noisy classifier and the cost report."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.models.cost import compiled_flops, model_cost
from diffusion.models.mlp import MLPDenoiser
from diffusion.models.unet import NoisyClassifier, UNet


def test_mlp_denoiser_shapes_and_conditioning():
    model = MLPDenoiser(out_features=4, hidden=32, depth=2, num_classes=3)
    x, t = jnp.ones((5, 2)), jnp.arange(5)
    params = model.init(jax.random.key(0), x, t, labels=jnp.zeros(5, jnp.int32))
    a = model.apply(params, x, t, labels=jnp.zeros(5, jnp.int32))
    b = model.apply(params, x, t, labels=jnp.full(5, 3))
    assert a.shape == (5, 4) and not np.allclose(a, b)


def test_noisy_classifier_is_the_encoder_half():
    kw = dict(image_size=8, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
              attention_resolutions=(4,), dropout=0.0, norm_groups=8)
    clf = NoisyClassifier(num_labels=7, pool_head_channels=16, **kw)
    x, t = jnp.ones((3, 8, 8, 1)), jnp.array([0, 5, 9])
    params = clf.init(jax.random.key(0), x, t)["params"]
    assert clf.apply({"params": params}, x, t).shape == (3, 7)
    unet_params = UNet(out_channels=1, **kw).init(jax.random.key(0), x, t)["params"]
    assert not any(k.startswith("up_blocks") for k in params)
    shared = [k for k in params if k in unet_params]
    assert "down_blocks_1_resnets_0" in shared and "mid_block_attentions_0" in shared


def test_flops_of_a_dense_layer_are_2_in_out():
    layer = nn.Dense(64)
    x = jnp.ones((16, 128))
    params = layer.init(jax.random.key(0), x)
    flops = compiled_flops(lambda p, x: layer.apply(p, x), params, x)
    assert abs(flops - 2 * 16 * 128 * 64) / (2 * 16 * 128 * 64) < 0.05


def test_model_cost_counts_parameters_and_scales_with_resolution():
    model = UNet(out_channels=1, image_size=8, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(), dropout=0.0, norm_groups=8)
    params = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32))["params"]
    small = model_cost(model, params, (8, 8, 1))
    big = model_cost(model, params, (16, 16, 1))
    assert small["params"] == sum(a.size for a in jax.tree.leaves(params))
    # Convolutions scale with the pixels (4×); the middle self-attention with their square (16×), a small share.
    assert 4.0 < big["flops_per_example"] / small["flops_per_example"] < 5.0
