"""Inception-v3 as used for FID (Heusel et al. 2017) in Flax, loading pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth`` (the TensorFlow FID graph's weights) by path.

The FID network differs from torchvision's Inception-v3: its average-pooling branches exclude
the padding from the count, and the last block pools by max. Parameter names follow the PyTorch
state dict (``Mixed_5b.branch1x1.conv.weight`` → ``Mixed_5b/branch1x1/conv/kernel``).
"""
from __future__ import annotations

from typing import Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.models.convert import read_state_dict

INPUT_SIZE = 299


class FrozenBatchNorm(nn.Module):
    """Inference-time batch norm (ε = 0.001) with its statistics stored as parameters."""
    eps: float = 1e-3

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale, bias = self.param("scale", nn.initializers.ones, (c,)), self.param("bias", nn.initializers.zeros, (c,))
        mean, var = self.param("mean", nn.initializers.zeros, (c,)), self.param("var", nn.initializers.ones, (c,))
        return (x - mean) * (scale * jax.lax.rsqrt(var + self.eps)) + bias


class BasicConv(nn.Module):
    """Conv (no bias) → batch norm → ReLU."""
    features: int
    kernel: Sequence[int] = (1, 1)
    stride: int = 1
    padding: Sequence[int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(self.features, tuple(self.kernel), self.stride, padding=((ph, ph), (pw, pw)),
                    use_bias=False, name="conv")(x)
        return nn.relu(FrozenBatchNorm(name="bn")(x))


def _avg_pool_3x3(x):
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, name="branch1x1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(BasicConv(48, name="branch5x5_1")(x))
        b3 = BasicConv(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = BasicConv(64, name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], -1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv(192, name="branch1x1")(x)
        b7 = BasicConv(c7, name="branch7x7_1")(x)
        b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c7, name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(BasicConv(192, name="branch3x3_1")(x))
        b7 = BasicConv(192, name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], -1)


class InceptionE(nn.Module):
    """``pool='avg'`` for Mixed_7b; the FID graph's Mixed_7c pools by max."""
    pool: str = "avg"

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(320, name="branch1x1")(x)
        b3 = BasicConv(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
        bd = BasicConv(448, name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
        pooled = (_avg_pool_3x3(x) if self.pool == "avg"
                  else nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1))))
        bp = BasicConv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], -1)


class FIDInceptionV3(nn.Module):
    """``x [B, 299, 299, 3] in [−1, 1] -> (pool3 features [B, 2048], logits [B, 1008])``."""
    num_classes: int = 1008

    @nn.compact
    def __call__(self, x):
        x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = _max_pool_3x3_s2(BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x))
        x = BasicConv(80, name="Conv2d_3b_1x1")(x)
        x = _max_pool_3x3_s2(BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x))
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        pool = jnp.mean(x, axis=(1, 2))
        return pool, nn.Dense(self.num_classes, name="fc")(pool)


def resize_for_inception(x):
    """Images [B, H, W, 1 or 3] in [−1, 1] → [B, 299, 299, 3], bilinear without antialiasing
    (``F.interpolate(mode='bilinear', align_corners=False)``, as pytorch-fid does)."""
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    return jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), "bilinear", antialias=False)


_LEAF_NAMES = {"weight": None, "bias": "bias", "running_mean": "mean", "running_var": "var"}


def fid_inception_params(state: dict[str, np.ndarray], model: FIDInceptionV3) -> dict:
    """Map a pytorch-fid state dict onto ``model``'s parameters; every tensor must fit."""
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3))))
    shapes = flax.traverse_util.flatten_dict(template["params"], sep="/")
    flat = {}
    for name, value in state.items():
        parts = name.split(".")
        if parts[-1] == "num_batches_tracked" or parts[0] == "AuxLogits":
            continue
        leaf = parts[-1]
        if leaf == "weight":
            leaf = "kernel" if parts[-2] in ("conv", "fc") else "scale"
        else:
            leaf = _LEAF_NAMES.get(leaf, leaf)
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)       # OIHW → HWIO
        elif value.ndim == 2:
            value = value.T
        key = "/".join(parts[:-1] + [leaf])
        if key not in shapes or tuple(shapes[key].shape) != value.shape:
            raise ValueError(f"tensor {name} {tuple(value.shape)} does not fit the FID Inception "
                             f"({key}: {tuple(shapes[key].shape) if key in shapes else 'absent'})")
        flat[key] = jnp.asarray(value, jnp.float32)
    missing = sorted(set(shapes) - set(flat))
    if missing:
        raise ValueError(f"the state dict lacks {len(missing)} FID Inception parameters, e.g. {missing[0]}")
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def load_fid_inception(path) -> tuple[FIDInceptionV3, dict]:
    """(model, params) from pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (or any
    state dict of that network, ``.pth``/``.bin``/``.safetensors``)."""
    model = FIDInceptionV3()
    return model, fid_inception_params(read_state_dict(path), model)
