"""The PatchGAN discriminator of the first-stage autoencoder's optional adversarial loss
(Isola et al. 2017; Esser et al. 2021; Rombach et al. 2022)."""
from __future__ import annotations

import flax.linen as nn


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017; taming's ``NLayerDiscriminator``): x [B, H, W, C] → logits
    [B, h', w', 1], one per overlapping patch. 4×4 convolutions, stride 2 for the first ``layers``
    (channels ×2 each, at most ×8), leaky ReLU 0.2, weights ~ N(0, 0.02). GroupNorm replaces
    taming's BatchNorm so the discriminator is a pure function of its parameters (no batch statistics)."""
    channels: int = 32
    layers: int = 2
    norm_groups: int = 8

    @nn.compact
    def __call__(self, x):
        conv = lambda ch, stride, name: nn.Conv(ch, (4, 4), strides=(stride, stride), padding=1, name=name,
                                                kernel_init=nn.initializers.normal(0.02))
        h = nn.leaky_relu(conv(self.channels, 2, "conv_0")(x), 0.2)
        for n in range(1, self.layers + 1):
            stride = 2 if n < self.layers else 1
            h = conv(self.channels * min(2 ** n, 8), stride, f"conv_{n}")(h)
            h = nn.leaky_relu(nn.GroupNorm(num_groups=self.norm_groups, name=f"norm_{n}")(h), 0.2)
        return conv(1, 1, "conv_out")(h)
