"""The toy MLP, the noisy classifier and the cost report."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.models.cost import hlo_flops, model_cost
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
    flops = hlo_flops(lambda p, x: layer.apply(p, x), params, x)
    assert abs(flops - 2 * 16 * 128 * 64) / (2 * 16 * 128 * 64) < 0.05


def test_flops_of_a_convolution_and_its_gradients_are_counted():
    """2·B·C_in·C_out per kernel tap that lands inside the image — (3·16 − 2)² of them per image for a
    3×3 "SAME" convolution over 16×16, XLA counting no multiplications by the zero padding — and three
    times that with both of its gradients (the FLOPs XLA:GPU's compiled analysis leaves out when cuDNN
    runs the convolution)."""
    x = jax.ShapeDtypeStruct((4, 16, 16, 32), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((3, 3, 32, 64), jnp.bfloat16)
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    expected = 2 * 4 * 32 * 64 * (3 * 16 - 2) ** 2
    assert abs(hlo_flops(conv, x, w) - expected) / expected < 0.01
    both = lambda x, w: jax.value_and_grad(lambda x, w: jnp.sum(conv(x, w).astype(jnp.float32) ** 2),
                                           argnums=(0, 1))(x, w)
    assert abs(hlo_flops(both, x, w) - 3 * expected) / (3 * expected) < 0.02


def test_model_cost_counts_parameters_and_scales_with_resolution():
    model = UNet(out_channels=1, image_size=8, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(), dropout=0.0, norm_groups=8)
    params = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32))["params"]
    small = model_cost(model, params, (8, 8, 1))
    big = model_cost(model, params, (16, 16, 1))
    assert small["params"] == sum(a.size for a in jax.tree.leaves(params))
    # Convolutions scale with the pixels (4×); the middle self-attention with their square (16×), a small share.
    assert 4.0 < big["flops_per_example"] / small["flops_per_example"] < 5.0
