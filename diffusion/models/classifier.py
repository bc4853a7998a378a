"""A small CNN for 28×28 digits and clothes: its logits give the Inception Score and its
penultimate features the FID for data whose scale Inception-v3 does not fit."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import serialization


class ImageClassifier(nn.Module):
    """``x [B, H, W, C] in [−1, 1] -> (logits [B, num_classes], features [B, features])``:
    two blocks of two 3×3 convs with ReLU and 2×2 max-pooling, a dense feature layer, dropout, logits."""
    num_classes: int = 10
    channels: tuple = (32, 64)
    features: int = 128
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = x
        for i, ch in enumerate(self.channels):
            h = nn.relu(nn.Conv(ch, (3, 3), name=f"conv_{i}_0")(h))
            h = nn.relu(nn.Conv(ch, (3, 3), name=f"conv_{i}_1")(h))
            h = nn.max_pool(h, (2, 2), (2, 2))
        features = nn.relu(nn.Dense(self.features, name="features")(h.reshape(h.shape[0], -1)))
        h = nn.Dropout(self.dropout)(features, deterministic=not train)
        return nn.Dense(self.num_classes, name="logits")(h).astype(jnp.float32), features.astype(jnp.float32)


def load_classifier_params(model: ImageClassifier, path, image_shape=(28, 28, 1)):
    """Weights written by ``experiments.train_classifier`` (flax msgpack), checked against ``model``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no classifier weights at {path}: train them with "
                                "python -m experiments.train_classifier --config configs/classifier_mnist.py")
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + tuple(image_shape)))["params"])
    try:
        return serialization.from_bytes(template, path.read_bytes())
    except Exception as e:
        raise ValueError(f"{path} does not hold weights for {model} ({type(e).__name__}: {e})") from e


def embedded_mnist_classifier():
    """(model, params): the feature classifier trained on the embedded MNIST subset's training
    split (``configs/classifier_mnist.py``), shipped inside the package."""
    model = ImageClassifier()
    return model, load_classifier_params(model, Path(str(resources.files("diffusion.data") / "mnist_classifier.msgpack")))
