"""KL-regularised autoencoder, f = 4 (LDM's kl-f4: c = 3, β_KL = 1e-6) on Fashion-MNIST.

Every Fashion-MNIST autoencoder pads the 28×28 images to 32×32 with background (first_stage.pad = 2)
so that each f in {1, 2, 4, 8} divides them and the latent side 32/f is a power of two that the
phase-2 U-Net can halve; PSNR and the reconstruction FID are measured on the 28×28 crop. Here
z ∈ R^{8×8×3}: 192 numbers for 784 pixels. 240,845 parameters (16 base channels); its 5,000 steps end
at PSNR 25.91 dB and rFID 15.43 against the embedded MNIST feature classifier (throughput:
benchmarks/RESULTS.md).

python -m experiments.train_autoencoder --config configs/latent/autoencoder_kl_f4.py --workdir runs/ae_kl_f4
"""
from configs import base, fashion_mnist


def get_config():
    c = base.get_config()
    c.data = fashion_mnist.get_config().data
    f = c.first_stage
    f.kind, f.factor, f.channel_mult, f.latent_channels, f.pad = "kl", 4, (1, 2, 2), 3, 2
    f.base_channels, f.num_res_blocks = 16, 1
    # LDM: Adam with β = (0.5, 0.9) and no clipping; a clip would rescale every step of the KL
    # model's per-image summed loss.
    c.optim.lr, c.optim.b1, c.optim.b2, c.optim.grad_clip = 5e-4, 0.5, 0.9, 0.0
    c.train.num_steps = 5000
    c.train.sample_every = 1000
    c.train.checkpoint_every = 1000
    return c
