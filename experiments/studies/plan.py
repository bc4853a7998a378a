"""What a study needs, decided before anything runs: each model's config (its dataset's, brought to
the study's budget, with the model's overrides), the latent-diffusion autoencoders, the CLIP runs
and the feature and noisy classifiers it trains, the cells it measures, and the ``experiments.train``
/ ``train_autoencoder`` / ``train_clip`` / ``train_classifier`` / ``evaluate`` command behind each of them."""
from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import re
from pathlib import Path
from typing import Callable, Optional

import ml_collections
from flax import traverse_util

from configs import (base, celeba64_ddim, cifar10_ddpm, classifier_fashion_mnist, fashion_mnist, imagenet64_adm,
                     noisy_classifier_mnist)
from experiments import build, draw_cache, scoring
from experiments.cascade import chain
from experiments.latent import autoencoder_runs
from experiments.text import clip_runs

# Per dataset: the config its models derive from (and its file, for the printed commands), and the
# feature classifier config for 28×28 data (None: the embedded MNIST classifier, or Inception).
# MNIST studies derive from configs/base.py (Ho et al.'s L_simple on the embedded subset), not from
# the main job's configs/mnist.py, whose recipe is tuned for its 30 minutes (docs/main_job/recipe.md).
DATASETS = {
    "fashion_mnist": (fashion_mnist, "configs/fashion_mnist.py", classifier_fashion_mnist),
    "mnist": (base, "configs/base.py", None),
    "cifar10": (cifar10_ddpm, "configs/cifar10_ddpm.py", None),
    "celeba64": (celeba64_ddim, "configs/celeba64_ddim.py", None),
    "imagenet64": (imagenet64_adm, "configs/imagenet64_adm.py", None),
}
PAPER_SAMPLES = 50_000
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"   # pytorch-fid's weights, as the commands name them by default
CELL_DEFAULTS = dict(eta=0.0, guidance="", scale=0.0, clip=None, cascade=(), aug_level=0, truncated=False,
                     upsampled_input=False,   # a cascade cell measuring its last stage's input resized alone
                     prior="", prior_scale=0.0)   # an unCLIP decoder's cell: its prior (a model) and that one's weight
PER_MODEL_METRICS = ("nll", "sddpm")      # a study's metrics measured per model rather than per cell


def load_study(name: str):
    """The study module (its ``get_config``, optional ``claims`` and ``findings``) by name or file path."""
    if name.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(name).stem, name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(f"configs.studies.{name}")
    except ModuleNotFoundError:
        known = sorted(p.stem for p in (Path(__file__).parents[2] / "configs" / "studies").glob("*.py")
                       if p.stem not in ("__init__", "base"))
        raise ValueError(f"unknown study {name!r}; choose one of {known} or give a study file's path") from None


def check_study(study: ml_collections.ConfigDict):
    """Refuse a study whose cells, noisy classifier or metrics name something it does not have."""
    for cell in study.cells:
        if cell["model"] not in study.models:
            raise ValueError(f"study cell names model {cell['model']!r}, which is not in its models "
                             f"{sorted(study.models)}")
        if cell.get("clip") not in (None,) + build.CLIPS:
            raise ValueError(f"study cell {cell} has clip={cell['clip']!r}: use one of {build.CLIPS} "
                             "(or leave it out for the model's sample.clip)")
        stages = tuple(cell.get("cascade", ()))
        trained = stages[1:] if stages[:1] == (chain.HELDOUT,) else stages     # the held-out images may come first
        if any(stage not in study.models for stage in trained):
            raise ValueError(f"study cell {cell} has a cascade stage that is not in its models {sorted(study.models)} "
                             f"(or {chain.HELDOUT!r} first)")
        if cell.get("upsampled_input") and not stages:
            raise ValueError(f"study cell {cell} measures upsampled_input, which only a cascade's cell has")
    for name, overrides_ in study.models.items():
        autoencoder = overrides_.get("data", {}).get("autoencoder", "")
        if autoencoder and autoencoder not in study.autoencoders:
            raise ValueError(f"study model {name!r} has data.autoencoder={autoencoder!r}, which is not one of the "
                             f"study's autoencoders {sorted(study.autoencoders)}")
    if study.noisy_classifier and study.noisy_classifier not in study.models:
        raise ValueError(f"study noisy_classifier={study.noisy_classifier!r} is not one of its models "
                         f"{sorted(study.models)}")
    if any(cell.get("guidance") == "classifier" for cell in study.cells) and not study.noisy_classifier:
        raise ValueError("study cells use classifier guidance; set noisy_classifier to the model it guides")
    for name, overrides_ in study.models.items():
        clip_run = overrides_.get("model", {}).get("clip_run", "")
        if study.clips and clip_run not in ("",) + tuple(study.clips):
            raise ValueError(f"study model {name!r} has model.clip_run={clip_run!r}, which is not one of the study's "
                             f"clips {sorted(study.clips)}")
    for field in ("guidance_clip", "score_clip"):
        if study[field] and study[field] not in study.clips:
            raise ValueError(f"study {field}={study[field]!r} is not one of its clips {sorted(study.clips)}")
    for cell in study.cells:
        if cell.get("prior") and cell["prior"] not in study.models:
            raise ValueError(f"study cell {cell} has prior={cell['prior']!r}, which is not in its models "
                             f"{sorted(study.models)}")
        if cell.get("guidance") == "clip" and not study.guidance_clip:
            raise ValueError("study cells use CLIP guidance; set guidance_clip to one of its (noise-aware) clips")
    known = list(scoring.METRICS) + list(scoring.PROMPT_METRICS) + list(PER_MODEL_METRICS)
    unknown = set(study.metrics) - set(known)
    if unknown:
        raise ValueError(f"study metrics {sorted(unknown)} are not among {sorted(known)}")
    if "clip_score" in study.metrics and not study.score_clip:
        raise ValueError("study metric 'clip_score' needs score_clip: one of its clips, of clean images")


def model_config(study, name: str, dataset: str, scale: str, data=None,
                 paper_overrides: Optional[Callable] = None) -> ml_collections.ConfigDict:
    """The dataset's config, brought to the study's budget (default scale), with the model's overrides:
    at ``scale="paper"`` those of ``paper_overrides(name, config)`` when the study has them (its
    models at the papers' size), else the study's own."""
    config = DATASETS[dataset][0].get_config()
    if data:
        config.data.source = data
    if scale == "default":
        config.update(study.budget.to_dict())
    if scale == "paper" and paper_overrides is not None:
        config.update(paper_overrides(name, config))
    else:
        config.update(study.models[name].to_dict())
    return config


def classifier_config(config_module, model: ml_collections.ConfigDict, study, scale: str, *,
                      encoder: bool) -> ml_collections.ConfigDict:
    """``config_module``'s classifier on ``model``'s data without class dropout (a conditional
    denoiser's, which a classifier refuses) and on its pixels (not a latent model's z); with
    ``encoder``, ADM's noisy classifier on the model's diffusion and U-Net. At the default scale it
    trains the study's ``classifier_steps``."""
    c = config_module.get_config()
    c.data = copy.deepcopy(model.data)
    c.data.class_dropout, c.data.autoencoder = 0.0, ""
    if encoder:
        c.diffusion = copy.deepcopy(model.diffusion)
        c.model.update(model.model.to_dict())
    if scale == "default":
        c.train.num_steps = study.classifier_steps
    return c


def autoencoder_training(study, name: str, model: ml_collections.ConfigDict, workdir: Path,
                         scale: str = "default") -> Training:
    """The study's autoencoder ``name`` (``configs/<study.autoencoders[name]>.py``, Rombach et al.
    2022's first stage; at ``scale="paper"`` ``study.paper_autoencoders[name]`` when it has them) on
    ``model``'s data, trained by ``experiments.train_autoencoder`` in ``workdir`` for the study's
    ``autoencoder_steps`` when set (default scale); refused before any work if its factor does not
    fit the data."""
    files = study.paper_autoencoders if scale == "paper" and study.paper_autoencoders else study.autoencoders
    config_file = f"configs/{files[name]}.py"
    module = importlib.import_module("configs." + files[name].replace("/", "."))
    config = module.get_config()
    config.data = copy.deepcopy(model.data)
    config.data.autoencoder = ""
    if study.autoencoder_steps and scale == "default":
        config.train.num_steps = study.autoencoder_steps
    autoencoder_runs.validate(config)
    return Training("train_autoencoder", config, config_file, module.get_config(), workdir)


def clip_training(study, name: str, data_config: ml_collections.ConfigDict, workdir: Path) -> Training:
    """The study's CLIP run ``name`` (``configs/<study.clips[name]>.py``, Radford et al. 2021; a
    noise-aware one for GLIDE's CLIP guidance) on ``data_config``'s images and seed (its held-out
    split), trained by ``experiments.train_clip`` in ``workdir``."""
    config_file = f"configs/{study.clips[name]}.py"
    module = importlib.import_module("configs." + study.clips[name].replace("/", "."))
    config = module.get_config()
    config.data.source, config.seed = data_config.data.source, data_config.seed
    clip_runs.validate(config)
    return Training("train_clip", config, config_file, module.get_config(), workdir)


def overrides(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict) -> list[str]:
    """``--config.<field>=<value>`` for every field where ``config`` differs from ``reference``."""
    mine = traverse_util.flatten_dict(config.to_dict(), sep=".")
    theirs = traverse_util.flatten_dict(reference.to_dict(), sep=".")
    text = lambda v: ",".join(map(str, v)) if isinstance(v, (tuple, list)) else v
    return [f"--config.{k}={text(v)}" for k, v in mine.items() if theirs.get(k) != v]


def cell_name(cell: dict) -> str:
    """The name of a cell of ``Plan.cells`` (its measurements' file): its model and setting tag."""
    tag = draw_cache.setting_tag(cell["sampler"], cell["steps"], cell["eta"], cell["guidance"], cell["scale"],
                                 cell["clip"])
    if cell["prior"]:     # an unCLIP cell: the prior and its weight before the decoder's setting
        tag = f"{cell['prior']}_w{cell['prior_scale']:g}_{tag}"
    if cell["cascade"]:   # a cascade's cell: its stages, the level s and the form of the augmentation
        tag = ("_".join(cell["cascade"]) + f"_{tag}_s{cell['aug_level']}" + ("_truncated" if cell["truncated"] else "")
               + ("_upsampled_input" if cell["upsampled_input"] else ""))
    return re.sub(r"\W+", "_", f"{cell['model']}_{tag}")


@dataclasses.dataclass(frozen=True)
class Training:
    """A model or classifier the study trains: ``python -m experiments.<entry_point>`` on ``config``
    in ``workdir``; the command prints ``config`` as overrides of ``config_file``'s, ``reference``."""
    entry_point: str                    # "train", "train_autoencoder", "train_clip" or "train_classifier"
    config: ml_collections.ConfigDict
    config_file: str
    reference: ml_collections.ConfigDict
    workdir: Path

    @property
    def command(self) -> str:
        return (f"python -m experiments.{self.entry_point} --config {self.config_file} --workdir {self.workdir} "
                + " ".join(overrides(self.config, self.reference)))


def classifier_training(config_module, config: ml_collections.ConfigDict, workdir: Path) -> Training:
    """Training ``config`` (built from ``config_module``) with ``experiments.train_classifier``."""
    config_file = f"configs/{config_module.__name__.split('.')[-1]}.py"
    return Training("train_classifier", config, config_file, config_module.get_config(), workdir)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a study trains and measures, and where: ``<workdir>/models/<name>``,
    ``autoencoders/<name>``, ``clips/<name>``, ``feature_classifier``, ``noisy_classifier``, ``cells``."""
    study: ml_collections.ConfigDict
    claims: Optional[Callable]          # the study module's claims(results, nll), if it has one
    dataset: str
    scale: str
    workdir: Path
    num: int                            # samples per cell
    models: dict[str, Training]
    feature_classifier: Optional[Training]
    noisy_classifier: Optional[Training]
    autoencoders: dict[str, Training] = dataclasses.field(default_factory=dict)   # trained before the models
    findings: Optional[Callable] = None  # the study module's findings(results): the figures explained, measured
    clips: dict[str, Training] = dataclasses.field(default_factory=dict)          # trained before the models
    inception_weights: str = INCEPTION_FILE   # what the printed commands name for data measured with Inception

    @property
    def cells(self) -> list[dict]:
        """The study's cells with every setting filled in (``CELL_DEFAULTS``)."""
        return [{**CELL_DEFAULTS, **cell} for cell in self.study.cells]

    @property
    def data_config(self) -> ml_collections.ConfigDict:
        """A model's config, for what the models share: data, seed, image size (the largest, where a
        cascade's base stage is smaller)."""
        return largest(self.models)

    @property
    def classifier_weights(self) -> Optional[str]:
        return str(self.feature_classifier.workdir / "classifier.msgpack") if self.feature_classifier else None

    @property
    def trainings(self) -> list[Training]:
        """In the order they must run: the feature classifier (an autoencoder's rFID reads it), the
        autoencoders and CLIP runs (models read them), the models, the noisy classifier."""
        return ([t for t in (self.feature_classifier,) if t] + list(self.autoencoders.values())
                + list(self.clips.values()) + list(self.models.values()) + [t for t in (self.noisy_classifier,) if t])

    def clip_dir(self, field: str) -> Optional[Path]:
        """The workdir of the study's CLIP named by its ``field`` ("guidance_clip", "score_clip"), if set."""
        return self.clips[self.study[field]].workdir if self.study[field] else None

    def model_dir(self, name: str) -> Path:
        """Where model ``name`` trains (a cascade's ``heldout`` first stage is the word itself)."""
        return Path(chain.HELDOUT) if name == chain.HELDOUT else self.models[name].workdir

    def evaluate_command(self, cell: dict) -> str:
        """The ``experiments.evaluate`` command that measures one cell on its own."""
        setting = f"{cell['sampler']}:{cell['steps']}" + (f":{cell['eta']:g}" if cell["sampler"] == "ddim" else "")
        guided = f" --guidance {cell['guidance']} --scale {cell['scale']:g}" if cell["guidance"] else ""
        guided += f" --classifier_workdir {self.noisy_classifier.workdir}" if cell["guidance"] == "classifier" else ""
        guided += f" --clip_run {self.clip_dir('guidance_clip')}" if cell["guidance"] == "clip" else ""
        weights = f" --classifier_weights {self.classifier_weights}" if self.classifier_weights else ""
        weights += self.inception_flag
        weights += f" --clip_score_run {self.clip_dir('score_clip')}" if self.study.score_clip else ""
        if cell["prior"]:
            return (f"python -m experiments.evaluate --unclip {self.model_dir(cell['prior'])},"
                    f"{self.model_dir(cell['model'])} --scales {cell['prior_scale']:g},{cell['scale']:g} "
                    f"--samplers {setting} --num {self.num}{weights}")
        clip = f"  # x̂_0 thresholding: {cell['clip'] or 'none'}" if cell["clip"] is not None else ""
        if cell["cascade"]:
            stages = ",".join(str(self.model_dir(m)) for m in tuple(cell["cascade"]) + (cell["model"],))
            form = (" --truncated" if cell["truncated"] else "") + (f" --scales {cell['scale']:g}" if cell["scale"] else "")
            bare = "  # its upsampled_input" if cell["upsampled_input"] else ""
            return (f"python -m experiments.evaluate --cascade {stages} --aug_level {cell['aug_level']}{form} "
                    f"--samplers {setting} --num {self.num}{weights}{bare}")
        return (f"python -m experiments.evaluate --workdir {self.model_dir(cell['model'])} --samplers {setting} "
                f"--num {self.num}{guided}{weights}{clip}")

    @property
    def commands(self) -> list[str]:
        return ([t.command + (self.inception_flag if t.entry_point == "train_autoencoder" else "") for t in self.trainings]
                + [self.evaluate_command(c) for c in self.cells])

    @property
    def inception_flag(self) -> str:
        """``--inception_weights`` for the commands that measure FID, where the data needs Inception."""
        return f" --inception_weights {self.inception_weights}" if scoring.uses_inception(self.data_config) else ""


def largest(models: dict[str, Training]) -> ml_collections.ConfigDict:
    """The config of the first of ``models`` at the largest image size: whose data and features the
    study measures against (a cascade's final resolution)."""
    return max((t.config for t in models.values()), key=lambda c: c.data.image_size)


def make_plan(study_module, workdir, *, dataset=None, data=None, scale: str = "default",
              inception_weights: Optional[str] = None) -> Plan:
    """The plan of ``study_module`` (a ``configs/studies`` file) in ``workdir``: ``dataset`` (default:
    the study's) read from ``data`` (default: the dataset config's), at the study's budget or, with
    ``scale="paper"``, the dataset's paper config and ``PAPER_SAMPLES`` per cell. A model whose
    ``data.autoencoder`` names one of the study's ``autoencoders`` encodes with that one, trained
    first in ``<workdir>/autoencoders/<name>``."""
    study = study_module.get_config()
    dataset = dataset or study.dataset
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    check_study(study)
    if study.clips and (scale == "paper" or dataset != study.dataset):
        raise ValueError(f"--scale {scale} --dataset {dataset}: the study's CLIP runs and captions are configs/clip_*.py's "
                         f"({study.dataset}, sized for a CPU); run it on {study.dataset} at its default scale")
    if scale == "paper" and study.paper_datasets and dataset not in study.paper_datasets:
        raise ValueError(f"--scale paper --dataset {dataset}: the study's paper-size models need one of "
                         f"{list(study.paper_datasets)}; add --dataset {study.paper_datasets[0]}, or drop --scale paper")
    paper_overrides = getattr(study_module, "paper_overrides", None)
    workdir = Path(workdir)
    base_module, base_file, classifier_module = DATASETS[dataset]
    reference = base_module.get_config()
    models = {m: Training("train", model_config(study, m, dataset, scale, data, paper_overrides), base_file,
                          reference, workdir / "models" / m) for m in study.models}
    autoencoders = {}     # the study's autoencoders by name
    for job in models.values():
        name, first_stage = job.config.data.autoencoder, None
        if name:
            if name not in autoencoders:
                autoencoders[name] = autoencoder_training(study, name, job.config, workdir / "autoencoders" / name,
                                                          scale)
            job.config.data.autoencoder = str(autoencoders[name].workdir)
            first_stage = autoencoders[name].config
        # Refused before anything trains, a latent model against its planned autoencoder's config; a model
        # reading a planned CLIP's text tower is checked when it trains (the tower comes from that run).
        if job.config.model.clip_run not in study.clips:
            build.validate(job.config, autoencoder=first_stage)
    clips = {name: clip_training(study, name, largest(models), workdir / "clips" / name) for name in study.clips}
    for job in models.values():   # a study's CLIP names become its runs' workdirs
        if job.config.model.clip_run in clips:
            job.config.model.clip_run = str(clips[job.config.model.clip_run].workdir)
    first = largest(models)
    feature = noisy = None
    if classifier_module is not None:
        feature = classifier_training(classifier_module, classifier_config(
            classifier_module, first, study, scale, encoder=False), workdir / "feature_classifier")
    if study.noisy_classifier:
        noisy = classifier_training(noisy_classifier_mnist, classifier_config(
            noisy_classifier_mnist, models[study.noisy_classifier].config, study, scale, encoder=True),
            workdir / "noisy_classifier")
    return Plan(study=study, claims=getattr(study_module, "claims", None),
                findings=getattr(study_module, "findings", None), dataset=dataset, scale=scale,
                workdir=workdir, num=PAPER_SAMPLES if scale == "paper" else study.num_samples, models=models,
                feature_classifier=feature, noisy_classifier=noisy, autoencoders=autoencoders, clips=clips,
                inception_weights=inception_weights or INCEPTION_FILE)
