"""An unCLIP run's pieces from its config (Ramesh et al. 2022, §2): the frozen CLIP of
``model.clip_run`` (its image tower embeds, its text side conditions the prior), the prior's network
and cached training embeddings, the decoder's conditioning. ``model.kind`` names the stage:
'unclip_prior', P(z_i | y), a diffusion model over CLIP image embeddings given the caption (§2.2);
'unclip_decoder', P(x | z_i[, y]), the U-Net given the image embedding (§2.1). ``check`` refuses
the configs that cannot run; ``experiments.unclip.generation`` draws through both stages."""
from __future__ import annotations

from functools import partial
from typing import Optional

import ml_collections

from diffusion import parallel
from diffusion.data import datasets
from diffusion.text.clip import CLIP
from diffusion.unclip import embedding
from diffusion.unclip.prior import FrozenCLIPText, PriorTransformer
from experiments import runs
from experiments.text import captioning, clip_runs

PRIOR, DECODER = "unclip_prior", "unclip_decoder"
KINDS = (PRIOR, DECODER)


def clip_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return runs.load_config(c.model.clip_run)


def embed_dim(c: ml_collections.ConfigDict) -> int:
    """E of the CLIP embeddings an unCLIP stage reads (``clip.embed_dim`` of ``model.clip_run``)."""
    return clip_config(c).clip.embed_dim


def check(c: ml_collections.ConfigDict):
    """Refuse an unCLIP config that cannot run: no CLIP run at ``model.clip_run``, a noise-aware one
    (its image tower reads x_t and t, not clean images), one of another caption domain; a prior
    whose caption encoder is not that CLIP's text side ('clip_text' on the same run), settings for
    pixels (x̂_0 clipping, the discretised decoder), a width the heads do not split; a decoder without
    cross-attention for the embedding's tokens, an embedding dropout outside [0, 1), latents, a
    super-resolution stage or class labels; the held-out loss (its batches carry no embedding)."""
    m, u, kind = c.model, c.unclip, c.model.kind
    k = clip_runs.check_run(m.clip_run, why=f", and model.kind={kind!r} reads its embeddings")
    if k.clip.noise_aware:
        raise ValueError(f"config: the CLIP run {m.clip_run} is noise-aware (its image tower reads x_t and t, for CLIP "
                         "guidance); unCLIP embeds clean images: name a CLIP trained with clip.noise_aware=False")
    if c.data.captions and c.data.captions != k.clip.domain:
        raise ValueError(f"config: the CLIP run {m.clip_run} was trained on {k.clip.domain!r} captions, not "
                         f"data.captions={c.data.captions!r}")
    if c.train.eval_every:
        raise ValueError("config: train.eval_every's held-out loss gives the network no CLIP embedding: set "
                         "train.eval_every=0 for an unCLIP stage")
    if c.data.autoencoder or c.data.low_resolution or m.num_classes:
        raise ValueError("config: an unCLIP stage reads CLIP embeddings of 28×28 pixel images and no labels: set "
                         "data.autoencoder='', data.low_resolution=0 and model.num_classes=0")
    if kind == PRIOR:
        if m.context_encoder != "clip_text" or not c.data.captions:
            raise ValueError(f"config: the prior is conditioned on the caption through the text side of its CLIP "
                             f"(unCLIP §2.2): set model.context_encoder='clip_text' (got {m.context_encoder!r}) and "
                             f"data.captions={k.clip.domain!r}")
        if c.diffusion.decoder != "gaussian" or c.sample.clip != "none":
            raise ValueError(f"config: the prior diffuses CLIP embeddings, continuous and scaled to norm √E (not "
                             f"8-bit pixels in [−1, 1]): set diffusion.decoder='gaussian' (got {c.diffusion.decoder!r}) "
                             f"and sample.clip='none' (got {c.sample.clip!r})")
        if u.width % u.heads or u.layers < 1:
            raise ValueError(f"config: unclip.width={u.width} must split into unclip.heads={u.heads}, and "
                             f"unclip.layers={u.layers} be >= 1")
        return
    if not 0 <= u.embedding_dropout < 1:
        raise ValueError(f"config field unclip.embedding_dropout={u.embedding_dropout!r} is the share of image "
                         "embeddings replaced by the null (zero) one: a number in [0, 1) (unCLIP: 0.1)")
    if u.embedding_tokens < 1 or m.context_dim <= 0:
        raise ValueError(f"config: the decoder attends to unclip.embedding_tokens={u.embedding_tokens} tokens "
                         f"projected from the image embedding (unCLIP §2.1: 4): set it >= 1 and model.context_dim > 0 "
                         f"(got {m.context_dim})")


def check_sampled_alone(c: ml_collections.ConfigDict, workdir):
    """Refuse ``experiments.sample --workdir`` on an unCLIP stage: the prior's samples are embeddings,
    and the decoder draws from an embedding the prior (or an image, ``--variations``) gives it."""
    if c.model.kind == PRIOR:
        raise ValueError(f"{workdir} is an unCLIP prior: its samples are CLIP image embeddings, not images; draw "
                         f"images through the decoder with --unclip {workdir},<decoder workdir> --prompt '…'")
    if c.model.kind == DECODER:
        raise ValueError(f"{workdir} is an unCLIP decoder, which draws from a CLIP image embedding: give it one, "
                         f"from a prompt through a prior (--unclip <prior workdir>,{workdir} --prompt '…') or from "
                         f"an image (--workdir {workdir} --variations <image.png or held-out index>)")


def image_embedder(clip: CLIP, params):
    """``embed(x [B, 28, 28, 1] in [−1, 1]) -> z_i [B, E]``: the frozen CLIP image tower (a
    ``clip_runs.load_frozen`` model and its host parameters), its embedding in
    ``unclip.embedding_space`` (what both stages read)."""
    return lambda x: embedding.embedding_space(clip.apply({"params": params}, x, method=CLIP.encode_image))


def make_prior(c: ml_collections.ConfigDict, out_features: int, load_frozen: bool = True) -> PriorTransformer:
    """The prior's transformer (unCLIP §2.2) over ``model.clip_run``'s text side, whose weights are
    read from its checkpoint unless ``load_frozen`` is False (built to check shapes only)."""
    if load_frozen:
        clip, params, _, _ = clip_runs.load_frozen(c.model.clip_run)
    else:
        clip, params = clip_runs.make_clip(clip_config(c), captioning.tokenizer_of(c)), None
    u = c.unclip
    return PriorTransformer(out_features, FrozenCLIPText(clip.clone(parent=None), params), width=u.width,
                            num_layers=u.layers, num_heads=u.heads, dropout=c.model.dropout)


def make_condition(c: ml_collections.ConfigDict):
    """``training.train_step``'s ``condition`` for the decoder: each batch image's CLIP embedding,
    dropped to the null one at ``unclip.embedding_dropout`` (``unclip.decoder_condition``). Embedded
    in the step rather than cached: the frozen tower is small beside the U-Net, and it embeds the
    image the step trains on."""
    return partial(embedding.decoder_condition, embed=image_embedder(*clip_runs.load_frozen(c.model.clip_run)[:2]),
                   dropout=c.unclip.embedding_dropout)


def prior_training_data(c: ml_collections.ConfigDict, split: datasets.Split, mesh,
                        prior: Optional[PriorTransformer] = None) -> datasets.Split:
    """The prior's training pairs: ``split`` with each image replaced by its CLIP image embedding z_i
    (float32 [N, E], in ``embedding.embedding_space``), its caption tokens kept, whose CLIP text side the
    prior's network reads. The frozen image tower (``prior``'s CLIP, already read back; default: read
    from ``model.clip_run``) embeds the whole split once, here, as a latent run caches its latents
    (``autoencoder_runs.latent_training_data``): the prior never sees an image."""
    if prior is not None:
        clip, params = prior.text_encoder.clip, prior.text_encoder.params
    else:
        clip, params, _, _ = clip_runs.load_frozen(c.model.clip_run)
    return parallel.encode_split(image_embedder(clip, params), split, mesh)
