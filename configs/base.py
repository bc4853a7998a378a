"""Defaults every experiment derives from: the embedded MNIST subset, a small DDPM U-Net,
linear β with T = 1000, ε-prediction with L_simple, Adam, EMA, DDIM sample grids.

python -m experiments.train --config configs/base.py --workdir runs/base
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "mnist"            # "mnist" (embedded), a path to an .npz, "tfds:<name>", "toy:<name>"
    c.data.tfds_data_dir = ""          # where prepared TFDS datasets live ("" = TFDS default)
    c.data.image_size = 28             # images are centre-cropped and resized to this when they differ
    c.data.channels = 1
    c.data.random_flip = False
    c.data.holdout_fraction = 0.1      # held out (after a seeded shuffle) for evaluation
    c.data.num_classes = 10            # labels in the data are [0, num_classes); checked and used when model.num_classes > 0 (and by classifiers)
    c.data.class_dropout = 0.0         # labels replaced by the null label (classifier-free guidance)

    c.model = ml_collections.ConfigDict()
    c.model.kind = "unet"              # "unet" or "mlp"
    c.model.base_channels = 16
    c.model.channel_mult = (1, 2, 4)
    c.model.num_res_blocks = 1
    c.model.attention_resolutions = (7,)
    c.model.dropout = 0.0            # a small model on MNIST underfits; Ho et al. use 0.1 on CIFAR-10
    c.model.num_heads = 1
    c.model.num_head_channels = -1
    c.model.resblock_updown = False
    c.model.scale_shift_norm = False
    c.model.rescale_residual = False
    c.model.scale_skip = False
    c.model.efficient = False
    c.model.num_classes = 0            # > 0: class-conditional with a null label
    c.model.context_dim = 0
    c.model.norm_groups = 8
    c.model.remat = False
    c.model.hidden = 256               # mlp only
    c.model.depth = 4                  # mlp only

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "linear"
    c.diffusion.num_steps = 1000
    c.diffusion.zero_terminal_snr = False   # rescale β so ᾱ_{T−1} = 0 (Lin et al. 2024; needs prediction "v" or "x0")
    c.diffusion.prediction = "eps"     # "eps", "x0" or "v"
    c.diffusion.variance = "fixed_large"
    c.diffusion.loss = "simple"        # "simple", "vlb" or "hybrid"
    c.diffusion.hybrid_weight = 1e-3
    c.diffusion.weighting = ""         # "", "min_snr" or "p2"
    c.diffusion.min_snr_gamma = 5.0
    c.diffusion.p2_gamma = 1.0
    c.diffusion.p2_k = 1.0
    c.diffusion.timestep_sampler = "uniform"   # or "importance"
    c.diffusion.decoder = "discretized"        # "gaussian" for continuous (toy) data

    c.optim = ml_collections.ConfigDict()
    c.optim.optimizer = "adam"         # "adam" or "adamw"
    c.optim.lr = 1e-3
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.warmup_steps = 200
    c.optim.decay = "constant"         # "constant" or "cosine" (to 0 at train.num_steps)
    c.optim.grad_clip = 1.0            # global-norm clipping; 0 disables

    c.ema = ml_collections.ConfigDict()
    c.ema.decay = 0.999
    c.ema.warmup = True                # decay_t = min(decay, (1 + t)/(10 + t))

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 64            # global, over all devices and hosts
    c.train.num_steps = 3000
    c.train.compute_dtype = "float32"  # or "bfloat16" (parameters, optimizer state and EMA stay float32)
    c.train.log_every = 50
    c.train.sample_every = 1000
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3

    c.classifier = ml_collections.ConfigDict()   # experiments.train_classifier
    c.classifier.kind = "cnn"          # "cnn": features/logits for FID and IS; "noisy": ADM p(y|x_t, t) on the model's U-Net encoder
    c.classifier.features = 128
    c.classifier.dropout = 0.5
    c.classifier.max_shift = 2         # random translations (pixels) as augmentation

    c.sample = ml_collections.ConfigDict()
    c.sample.sampler = "ddim"
    c.sample.steps = 50
    c.sample.spacing = ""              # kept steps: "" (the sampler's own), "leading", "trailing", "linspace", "quad"
    c.sample.eta = 0.0
    c.sample.num = 64
    c.sample.clip = "static"           # "none", "static" or "dynamic" (Imagen's)
    c.sample.clip_max = 0.0            # > 0: upper bound (>= 1) on the dynamic threshold s (diffusers' sample_max_value); 0: none, as in Imagen
    return c
