"""Official DDPM weights (diffusers ``UNet2DModel`` layout, e.g. google/ddpm-cifar10-32) into the Flax U-Net.

Reads ``.safetensors``, or a PyTorch ``.bin`` state dict without PyTorch (``torch_files``: a
restricted unpickler, never an arbitrary one). Every tensor must find its
place with the right shape, and every parameter of the configured U-Net must be filled.
"""
from __future__ import annotations

from pathlib import Path

import flax
import jax
import numpy as np

from diffusion.models.torch_files import read_torch_state_dict


def read_state_dict(path) -> dict[str, np.ndarray]:
    """name → float32 array from a ``.safetensors`` or ``.bin``/``.pt`` state dict."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file
        try:
            return {k: v.astype(np.float32) for k, v in load_file(str(path)).items()}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"{path} is not a readable safetensors file ({e})") from e
    return {k: v.astype(np.float32) for k, v in read_torch_state_dict(path).items()}


def flax_path(name: str) -> tuple[str, ...]:
    """'down_blocks.0.resnets.1.conv1.weight' → ('down_blocks_0_resnets_1', 'conv1', 'weight')."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[-3] == "to_out" and parts[-2] == "0":
        parts = parts[:-3] + ["to_out", parts[-1]]
    block = "_".join(parts[:-2])
    return ((block,) if block else ()) + tuple(parts[-2:])


def _to_flax(leaf_names: set, value: np.ndarray):
    """(flax leaf name, array) for a PyTorch tensor of a layer that has ``leaf_names``."""
    if "scale" in leaf_names:                  # GroupNorm weight
        return "scale", value
    if value.ndim == 4:                        # Conv2d [O, I, kh, kw] → [kh, kw, I, O]
        return "kernel", value.transpose(2, 3, 1, 0)
    return "kernel", value.T                   # Linear [O, I] → [I, O]


def diffusers_to_flax(state: dict[str, np.ndarray], params_template) -> dict:
    """Fill a copy of ``params_template`` (the U-Net's params pytree or its shapes) from ``state``."""
    template = flax.traverse_util.flatten_dict(flax.core.unfreeze(params_template))
    layers: dict[tuple, set] = {}
    for key in template:
        layers.setdefault(key[:-1], set()).add(key[-1])
    out = {}
    for name, value in state.items():
        *layer, leaf = flax_path(name)
        layer = tuple(layer)
        if layer not in layers:
            raise ValueError(f"checkpoint tensor {name!r} {tuple(value.shape)} has no place in the "
                             f"configured U-Net (no layer {'/'.join(layer)})")
        leaf, array = ("bias", value) if leaf == "bias" else _to_flax(layers[layer], value)
        expected = tuple(template[layer + (leaf,)].shape)
        if array.shape != expected:
            raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(value.shape)}, which does not "
                             f"fit {'/'.join(layer + (leaf,))} of shape {expected} in the configured U-Net")
        out[layer + (leaf,)] = np.asarray(array, dtype=np.float32)
    missing = sorted(set(template) - set(out))
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} parameters of the configured U-Net, "
                         f"first {'/'.join(missing[0])}")
    return flax.traverse_util.unflatten_dict(out)


def load_diffusers_unet(path, model, image_channels: int = 3):
    """Parameters for ``model`` (a ``UNet``) read from a diffusers checkpoint file at ``path``."""
    x = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, image_channels), np.float32)
    t = jax.ShapeDtypeStruct((1,), np.int32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, t)["params"]
    return diffusers_to_flax(read_state_dict(path), shapes)
