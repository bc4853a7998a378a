"""Defaults every study derives from. A study lists the models it trains (overrides of its
dataset's config) and the cells it measures (a model with a sampler setting); the study file may
also define ``claims(results)``, the paper's qualitative claims checked on the measured table.

python -m experiments.reproduce --study <name> --workdir runs/studies/<name>
"""
import ml_collections


def get_config():
    s = ml_collections.ConfigDict()
    s.title = ""
    s.paper = ""                       # what is reproduced: paper, table or figure
    s.dataset = "fashion_mnist"        # "fashion_mnist", "mnist", "cifar10", "celeba64" or "imagenet64" (experiments.studies.plan.DATASETS)
    s.models = {}                      # model name -> nested overrides of the dataset's config
    s.cells = ()                       # dicts: model, sampler, steps, eta, guidance, scale, clip, row, col (an unCLIP decoder's: prior, prior_scale)
    s.metrics = ("fid",)               # table entries per cell (experiments.scoring.METRICS): "fid", "is", "confident"; "nll" and "sddpm" (seed 004's held-out objective) add per-model tables; scoring.PROMPT_METRICS for cells drawn for prompts
    s.plot = dict(x="steps", y="fid", series="row", logx=True, logy=False)   # x, y: a cell field or a metric
    s.autoencoders = {}                # name -> a configs/ autoencoder file (e.g. "latent/autoencoder_kl_f4"), trained first for the models whose data.autoencoder names it
    s.clips = {}                       # name -> a configs/ CLIP file (e.g. "text/clip_mnist"), trained first (experiments.train_clip) for the models whose model.clip_run names it
    s.guidance_clip = ""               # one of clips, noise-aware: the CLIP behind the cells with guidance="clip"
    s.score_clip = ""                  # one of clips, of clean images: scores every cell drawn for prompts (the "clip_score" metric)
    s.noisy_classifier = ""            # a model name: train an ADM noisy classifier on its config (classifier guidance)
    s.reconstruct_steps = 0            # > 0: per model, a sample grid and DDIM encode-then-decode pictures
    s.encode_depths = ()               # forward steps k: per model, a sample grid and seed 004's encode-then-decode (noise to x_k, decode with the cells' sampler) instead
    s.num_samples = 500                # per cell at the default scale (the papers use 50,000)
    s.nll_examples = 128               # held-out images for NLL and the SDDPM objective when "nll" or "sddpm" is a metric
    s.scale_note = ""                  # what the default scale trains, against the paper (default: the DDPM papers' U-Nets)
    s.classifier_steps = 1500          # training steps of the feature and noisy classifiers at the default scale
    s.autoencoder_steps = 0            # > 0: training steps of the study's autoencoders at the default scale (0: their configs' own)
    # --scale paper: the study module's paper_overrides(name, config), if it defines one, replaces
    # models[name] over the dataset's paper config (a model's paper size may depend on the data).
    s.paper_autoencoders = {}          # name -> a configs/ autoencoder file used instead of autoencoders[name] at --scale paper
    s.paper_datasets = ()              # the datasets --scale paper accepts (empty: any)
    s.paper_scale_note = ""            # what --scale paper trains (default: "at the papers' settings.")
    # What brings a paper's models down to a 2-CPU budget ("--scale default"); "--scale paper" drops it.
    # Sized from measured throughput on 2 cores: ~2 train steps/s and ~390 U-Net evaluations/s.
    s.budget = dict(model=dict(base_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1, dropout=0.0, norm_groups=8),
                    train=dict(batch_size=64, num_steps=3000), optim=dict(lr=1e-3, warmup_steps=200, decay="cosine"),
                    ema=dict(decay=0.999))
    return s
