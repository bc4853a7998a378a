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
    c.data.crop = ""                   # "": the centre square; "celeba_ddim": DDIM's 128×128 CelebA face box (datasets.CROPS)
    c.data.channels = 1
    c.data.random_flip = False         # each training image mirrored left–right with probability ½, on the host (diffusion.data.pipeline)
    c.data.workers = 0                 # grain worker processes making training batches; 0: in this process (the 2-core default, benchmarks/RESULTS.md)
    c.data.read_threads = 2            # threads reading training batches ahead (a buffer of twice as many batches)
    c.data.holdout_fraction = 0.1      # held out (after a seeded shuffle) for evaluation
    c.data.num_classes = 10            # labels in the data are [0, num_classes); checked and used when model.num_classes > 0 (and by classifiers)
    c.data.class_dropout = 0.0         # labels replaced by the null label (classifier-free guidance)
    c.data.autoencoder = ""            # latent diffusion: an experiments.train_autoencoder workdir whose latents are diffused; "" = pixels
    c.data.latent_scale = 0.0          # LDM's scale_factor 1/std(z); 0: measured on the training latents at the start of the run, stored in its config.json
    c.data.captions = ""               # a caption domain ("mnist", "fashion_mnist"; diffusion.text.captions): each image carries its caption's token ids, for a text-conditioned model
    c.data.low_resolution = 0          # > 0: a cascade's super-resolution stage, conditioned on each image shrunk to this size and upsampled back (cascade section)

    c.model = ml_collections.ConfigDict()
    c.model.kind = "unet"              # "unet", "mlp", unCLIP's "unclip_prior" and "unclip_decoder" (unclip section), or seed 004's "shallow_autoencoder", "dense_autoencoder", "conv_autoencoder"
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
    c.model.context_dim = 0            # > 0: cross-attention to the context encoder's tokens of this width
    c.model.context_encoder = ""       # τθ: "" (none), "class_tokens" (each label → context_tokens learned tokens, in place of the class embedding), "text" (a caption encoder trained with the U-Net) or "clip_text" (model.clip_run's frozen text tower)
    c.model.context_tokens = 1
    c.model.text_layers = 2            # context_encoder "text": causal transformer blocks of the jointly trained caption encoder (width context_dim)
    c.model.text_heads = 4
    c.model.clip_run = ""              # context_encoder "clip_text": an experiments.train_clip workdir whose text tower is the frozen encoder; unCLIP: the CLIP whose embeddings it diffuses or decodes
    c.model.norm_groups = 8
    c.model.remat = False
    c.model.attention_implementation = "xla"   # or "cudnn" (fused flash attention, GPU + bf16, head dim ≤ 128), "auto"
    c.model.hidden = 256               # mlp only
    c.model.depth = 4                  # mlp only
    c.model.code_width = 30            # autoencoders: units in the code (seed 004)
    c.model.autoencoder_width = 256    # dense_autoencoder: units of the layers around the code
    c.model.autoencoder_features = (16, 32)   # conv_autoencoder: channels of its stride-2 convolutions
    c.model.step_embedding = True      # autoencoders: the step's embedding added to the code

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "linear"
    c.diffusion.num_steps = 1000
    c.diffusion.zero_terminal_snr = False   # rescale β so ᾱ_{T−1} = 0 (Lin et al. 2024; needs prediction "v" or "x0")
    c.diffusion.prediction = "eps"     # "eps", "x0", "v", or "residual" (seed 004's ε_r; loss "sddpm" and sampler "sddpm")
    c.diffusion.variance = "fixed_large"
    c.diffusion.loss = "simple"        # "simple", "vlb", "hybrid" or "sddpm" (seed 004's −log q_r on forward pairs)
    c.diffusion.hybrid_weight = 1e-3
    c.diffusion.weighting = ""         # "", "min_snr" or "p2"
    c.diffusion.min_snr_gamma = 5.0
    c.diffusion.p2_gamma = 1.0
    c.diffusion.p2_k = 1.0
    c.diffusion.timestep_sampler = "uniform"   # or "stratified" (VDM's low-discrepancy batch) or "importance" (L_VLB)
    c.diffusion.decoder = "discretized"        # "gaussian" for continuous (toy) data

    c.optim = ml_collections.ConfigDict()
    c.optim.optimizer = "adam"         # "adam" or "adamw"
    c.optim.lr = 1e-3
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.warmup_steps = 200
    c.optim.decay = "constant"         # "constant", "cosine" (to 0 at train.num_steps) or "cooldown" (constant, then linear to 0 over the last optim.cooldown_steps)
    c.optim.cooldown_steps = 0
    c.optim.grad_clip = 1.0            # global-norm clipping; 0 disables
    c.optim.grad_accum_steps = 1       # k > 1: each step's train.batch_size rows run as k micro-batches whose mean gradient is applied once (optax.MultiSteps)

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
    c.train.eval_every = 0             # > 0 (experiments.train): every n steps, the EMA's held-out loss on 4 fixed batches (fixed t and noise) and bits/dim (full VLB) of 8 fixed images, as eval/loss, eval/bpd
    c.train.caption_dropout = 0.0      # text-conditioned runs: captions replaced by the null (empty) caption, for classifier-free guidance (GLIDE: 0.2)
    c.train.keep_period = 0            # > 0: checkpoints at multiples of this step are kept besides the newest ones

    c.parallel = ml_collections.ConfigDict()
    c.parallel.fsdp = 1                # devices per parameter shard: mesh (devices / fsdp) × fsdp; 1 replicates the state

    c.cascade = ml_collections.ConfigDict()   # a super-resolution stage (data.low_resolution > 0), Ho et al. 2021
    c.cascade.augmentation = "none"    # of the low-resolution conditioning in training: "none", "gaussian" (z_s ~ q(z_s | z_0), s told to the network) or "blur"
    c.cascade.aug_level_range = (0, 0) # gaussian: s drawn uniformly from these schedule indices (inclusive, within [0, T))
    c.cascade.blur_sigma_range = (0.4, 0.6)   # blur: σ drawn uniformly from this range (CDM's), in low-resolution pixels
    c.cascade.blur_kernel = 3          # blur: the kernel's side (odd)
    c.cascade.blur_fraction = 0.5      # blur: the share of examples blurred, the rest sharp (CDM §3.1: "50% of the examples")
    c.cascade.aug_level = 0            # gaussian: the level s the conditioning is given at sampling (grids; the default of experiments.sample --cascade)
    c.cascade.truncated = False        # gaussian: at sampling stop the lower stage at s (truncated) rather than corrupt its output to s (the default of --truncated)

    c.unclip = ml_collections.ConfigDict()   # unCLIP (Ramesh et al. 2022) on model.clip_run's embeddings: model.kind 'unclip_prior' or 'unclip_decoder'
    c.unclip.embedding_dropout = 0.1   # decoder: image embeddings replaced by the null (zero) embedding, for classifier-free guidance (§2.1: 10%)
    c.unclip.embedding_tokens = 4      # decoder: extra cross-attention tokens projected from the image embedding (§2.1: four)
    c.unclip.width = 128               # prior: its causal transformer's width, blocks and heads (§2.2)
    c.unclip.layers = 4
    c.unclip.heads = 4

    c.classifier = ml_collections.ConfigDict()   # experiments.train_classifier
    c.classifier.kind = "cnn"          # "cnn": features/logits for FID and IS; "noisy": ADM p(y|x_t, t) on the model's U-Net encoder
    c.classifier.features = 128
    c.classifier.dropout = 0.5
    c.classifier.max_shift = 2         # random translations (pixels) as augmentation

    c.first_stage = ml_collections.ConfigDict()   # experiments.train_autoencoder: LDM's autoencoder (Rombach et al. 2022)
    c.first_stage.kind = "kl"          # "kl" (KL-reg: z ~ N(μ, σ²)) or "vq" (VQ-reg: nearest-codebook quantisation)
    c.first_stage.factor = 4           # downsampling f = H/h, one of 1, 2, 4, 8
    c.first_stage.channel_mult = (1, 2, 2)   # one per resolution: log2(f) + 1 entries
    c.first_stage.base_channels = 32
    c.first_stage.num_res_blocks = 1
    c.first_stage.mid_attention = True
    c.first_stage.norm_groups = 8
    c.first_stage.latent_channels = 3  # c of z ∈ R^{h×w×c}
    c.first_stage.pad = 0              # background pixels added on each side inside the model (28 + 2·2 = 32 for f = 8)
    c.first_stage.codebook_size = 256  # VQ-reg: codes K (>= 2)
    c.first_stage.codebook_update = "loss"   # VQ-reg: "loss" (codebook loss) or "ema" (EMA of the assigned encodings)
    c.first_stage.discriminator = False      # a PatchGAN and its hinge loss (first_stage_train.disc_*)
    c.first_stage.disc_channels = 32
    c.first_stage.disc_layers = 2

    c.first_stage_train = ml_collections.ConfigDict()   # the autoencoder's losses and measurements
    c.first_stage_train.reconstruction = "l1"   # "l1" or "l2"; no perceptual loss (LPIPS weights cannot be downloaded)
    c.first_stage_train.kl_weight = 1e-6        # β_KL on the KL summed over the latent (LDM)
    c.first_stage_train.codebook_weight = 1.0
    c.first_stage_train.commitment = 0.25       # β of the commitment term (van den Oord et al. 2017)
    c.first_stage_train.codebook_decay = 0.99   # EMA codebook updates
    c.first_stage_train.restart_below = 1.0     # EMA codebook updates: a code whose EMA count falls below this restarts at a random encoding (Jukebox); 0: never
    c.first_stage_train.disc_weight = 0.5       # times the adaptive weight λ, from step disc_start on
    c.first_stage_train.disc_start = 0
    c.first_stage_train.eval_examples = 2000    # held-out images reconstructed for PSNR and rFID at each grid
    c.first_stage_train.grid_images = 32        # originals over reconstructions in each grid

    c.sample = ml_collections.ConfigDict()
    c.sample.sampler = "ddim"
    c.sample.steps = 50
    c.sample.spacing = ""              # kept steps: "" (the sampler's own), "leading", "trailing", "linspace", "quad"
    c.sample.eta = 0.0
    c.sample.num = 64
    c.sample.clip = "static"           # "none", "static" or "dynamic" (Imagen's)
    c.sample.clip_max = 0.0            # > 0: upper bound (>= 1) on the dynamic threshold s (diffusers' sample_max_value); 0: none, as in Imagen
    return c
