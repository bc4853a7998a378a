"""The text-to-image study (configs/studies/text_to_image.py): its plan trains the CLIPs first and
points every model at them, its configs are valid, its cells and commands are complete, its claims
read the table they are given; and the CLIP score it lists is 100 · cosine of sample and prompt."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from diffusion import parallel
from diffusion.data import datasets
from diffusion.text import captions
from diffusion.text.clip import CLIP
from experiments import build, scoring
from experiments.studies import plan
from experiments.text import clip_runs, clip_training


def _stand_in_clip_runs(study_plan):
    """Each planned CLIP run's config.json and tokenizer.json (what a model's validation reads), without
    training it."""
    train = build.load_data(next(iter(study_plan.clips.values())).config)[0]
    for job in study_plan.clips.values():
        job.workdir.mkdir(parents=True)
        (job.workdir / "config.json").write_text(json.dumps(job.config.to_dict(), indent=2, default=list))
        clip_training.run_tokenizer(job.config, job.workdir, train)


def test_the_text_to_image_study_plans_valid_models_on_its_clips(tmp_path):
    module = plan.load_study("text_to_image")
    study_plan = plan.make_plan(module, tmp_path)
    clips = {name: tmp_path / "clips" / name for name in ("clip", "clip_noisy")}
    assert {n: j.workdir for n, j in study_plan.clips.items()} == clips
    assert study_plan.clips["clip_noisy"].config.clip.noise_aware and not study_plan.clips["clip"].config.clip.noise_aware
    order = [t.workdir for t in study_plan.trainings]
    assert order[:2] == [clips["clip"], clips["clip_noisy"]]           # the models read them
    _stand_in_clip_runs(study_plan)
    for name, job in study_plan.models.items():
        build.validate(job.config)
        assert job.config.train.num_steps == study_plan.study.budget.train.num_steps
        reads_clip = name in ("clip_text", "unclip_prior", "unclip_decoder")
        assert job.config.model.clip_run == (str(clips["clip"]) if reads_clip else "")
    assert (study_plan.models["joint_large"].config.model.base_channels
            == 1.5 * study_plan.models["joint"].config.model.base_channels)
    unets = [m for m in study_plan.models if m != "unclip_prior"]
    assert all(study_plan.models[m].config.diffusion.weighting == "min_snr" for m in unets)
    assert not study_plan.models["unclip_prior"].config.diffusion.weighting   # its objective is unCLIP's
    names = [plan.cell_name(c) for c in study_plan.cells]
    assert len(set(names)) == len(names) == len(study_plan.cells)
    commands = study_plan.commands
    assert len(commands) == len(study_plan.trainings) + len(study_plan.cells)
    assert f"python -m experiments.train_clip --config configs/text/clip_mnist_noisy.py --workdir {clips['clip_noisy']} " in commands
    unclip = [c for c in commands if "--unclip" in c]
    assert len(unclip) == 4 and all(f"{tmp_path}/models/unclip_prior,{tmp_path}/models/unclip_decoder --scales 0," in c
                                    for c in unclip)
    assert sum("--guidance clip --scale" in c and f"--clip_run {clips['clip_noisy']}" in c for c in commands) == 3
    assert all(f"--clip_score_run {clips['clip']}" in c for c in commands if "experiments.evaluate" in c)


@pytest.mark.parametrize("kw, message", [(dict(scale="paper"), "--scale paper --dataset mnist: the study's CLIP runs"),
                                         (dict(dataset="fashion_mnist"), "run it on mnist at its default scale")])
def test_the_text_to_image_study_refuses_other_scales_and_data(kw, message):
    with pytest.raises(ValueError, match=message):
        plan.make_plan(plan.load_study("text_to_image"), "runs/never", **kw)


def _synthetic_results(good: bool):
    """A row per cell: guidance raising class match and FID (or, not ``good``, lowering both), CLIP
    guidance worse than classifier-free at the same class match (or better), the frozen encoder
    ahead of the larger U-Net (or behind)."""
    from configs.studies import text_to_image as study
    cells = plan.make_plan(study, "runs/never").cells
    rows = []
    for c in cells:
        w = c["w"] if c["guidance"] != "clip" else 0
        match = 0.5 + 0.08 * w if good else 0.9 - 0.08 * w
        fid = 10.0 + 3.0 * w if good else 30.0 - 3.0 * w
        if c["guidance"] == "clip":
            match, fid = 0.5 + 0.08 * c["scale"] / 4, (40.0 if good else 1.0)
        if c["model"] == "clip_text" and c["w"] == study.MATCHED_W:
            match += 0.1 if good else -0.1
        rows.append(dict(c, class_match=match, fid=fid, fid_se=0.1, num=500, clip_score=20.0 + w, clip_score_se=0.1,
                         attribute_accuracy={"all": 0.5}))
    return study, rows


def test_the_text_to_image_claims_take_both_branches():
    study, rows = _synthetic_results(good=True)
    assert [held for _, held, _ in study.claims(rows, {})] == [True, True, True]
    study, rows = _synthetic_results(good=False)
    claims = study.claims(rows, {})
    assert [held for _, held, _ in claims] == [False, False, False]
    assert "classifier-free" in claims[1][2]


def test_the_text_to_image_findings_follow_the_figures():
    """The sentences take the branch the figures give: FID lowest at w = 0 (good: guidance raises it
    from the start) or at w = 5 (it falls throughout), and the frozen tower apart from CLIP guidance."""
    study, rows = _synthetic_results(good=True)
    lines = study.findings(rows)
    assert len(lines) == 5 and lines[0].startswith("joint text encoder (GLIDE): FID is lowest at w = 0")
    assert "rises by 15.0, more than 2 s.e." in lines[0] and "Below the minimum" not in lines[0]
    assert "lower by more than 2 s.e. with classifier-free guidance" in lines[3]
    study, rows = _synthetic_results(good=False)
    lines = study.findings(rows)
    assert "FID is lowest at w = 5" in lines[0] and "rises by 0.0, less than 2 s.e." in lines[0]
    assert "Below the minimum guidance first repairs" in lines[0]
    assert "lower by more than 2 s.e. with CLIP guidance" in lines[3]


def test_cfg_fid_is_interpolated_along_class_match_and_none_outside():
    study, rows = _synthetic_results(good=True)
    assert study.cfg_fid_at(rows, 0.5 + 0.08 * 2) == pytest.approx(16.0)     # halfway between w = 1 and w = 3
    assert study.cfg_fid_at(rows, 0.99) is None


@pytest.mark.system
def test_the_clip_score_is_100_times_the_cosine_of_sample_and_prompt(tiny_clip_run):
    """``scoring.clip_scorer`` against float64 numpy on the tiny CLIP's own embeddings."""
    model, params, tokenizer, config = clip_runs.load_clip(tiny_clip_run)
    heldout = build.load_data(config)[1]
    images = heldout.images[:12]
    prompts = captions.captions("mnist", images, heldout.labels[:12], seed=0)
    score = scoring.clip_scorer(tiny_clip_run, parallel.make_mesh())
    scores = score(images, prompts)
    image_emb = np.asarray(model.apply({"params": params}, datasets.to_model_range(images), method=CLIP.encode_image),
                           np.float64)
    text_emb = np.asarray(model.apply({"params": params}, tokenizer.encode(prompts), method=CLIP.encode_text), np.float64)
    cosine = np.sum(image_emb * text_emb, -1) / np.linalg.norm(image_emb, axis=-1) / np.linalg.norm(text_emb, axis=-1)
    np.testing.assert_allclose(scores, 100 * cosine, rtol=1e-4, atol=1e-3)
    record = scoring.text_alignment("mnist", images, np.eye(10)[heldout.labels[:12]], prompts,
                                       lambda i, p: np.asarray([1.0, 3.0] * 6))
    assert record["clip_score"] == pytest.approx(2.0) and record["clip_score_se"] == pytest.approx(np.sqrt(12 / 11 / 12))
    with pytest.raises(ValueError, match="outside the vocabulary of the CLIP"):
        score(images[:1], ["a zebra"])


@pytest.mark.system
def test_a_noised_clip_does_not_score(tiny_clip_run, tmp_path):
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    config = json.loads((Path(tiny_clip_run) / "config.json").read_text())
    config["clip"]["noise_aware"] = True
    (noisy / "config.json").write_text(json.dumps(config))
    (noisy / "tokenizer.json").write_text((Path(tiny_clip_run) / "tokenizer.json").read_text())
    with pytest.raises(ValueError, match="noise-aware CLIP .* give a CLIP of clean images"):
        scoring.clip_scorer(noisy, parallel.make_mesh())


@pytest.mark.skipif(not (Path(__file__).parents[1] / "runs" / "clip_mnist" / "clip_eval.json").exists(),
                    reason="needs the trained runs/clip_mnist")
def test_the_trained_clip_scores_matched_pairs_above_shuffled_ones():
    """runs/clip_mnist on 200 held-out images: their own captions score higher than another image's."""
    workdir = Path(__file__).parents[1] / "runs" / "clip_mnist"
    config = clip_runs.load_clip(workdir)[3]
    heldout = build.load_data(config)[1]
    images, labels = heldout.images[:200], heldout.labels[:200]
    prompts = captions.captions("mnist", images, labels, seed=0)
    score = scoring.clip_scorer(workdir, parallel.make_mesh())
    shuffled = [prompts[i] for i in np.random.default_rng(0).permutation(len(prompts))]
    matched, other = score(images, prompts), score(images, shuffled)
    assert matched.mean() > other.mean() + 3 * np.sqrt((matched.var() + other.var()) / len(prompts))


@pytest.mark.system
def test_a_study_cell_of_a_text_run_draws_for_held_out_captions_and_scores_them(tiny_text_run, tiny_clip_run, tmp_path):
    """``measure.measure_cell`` on a text run's guided cell: drawn for the held-out captions (as
    ``experiments.evaluate`` draws them), with FID, class match, attributes and the CLIP score."""
    from types import SimpleNamespace
    from experiments import inference
    from experiments.studies import measure
    run = inference.load_run(tiny_text_run)
    mesh = parallel.make_mesh()
    train, heldout = build.load_data(run.config)
    feature_name, feature_fn = scoring.make_feature_fn(run.config, mesh, "auto")
    reference, _ = scoring.reference_stats(run.config, feature_name, feature_fn, "train", train, tmp_path / "stats")
    study_plan = SimpleNamespace(workdir=tmp_path, num=10, model_dir=lambda m: Path(tiny_text_run), noisy_classifier=None)
    cell = dict(plan.CELL_DEFAULTS, model="text", sampler="ddim", steps=2, guidance="classifier_free", scale=2.0,
                row="text", col="w = 2")
    row = measure.measure_cell(study_plan, lambda m: run, mesh, cell, feature_fn, reference, 8, heldout=heldout,
                               clip_score=scoring.clip_scorer(tiny_clip_run, mesh))
    assert row["num"] == 10 and np.isfinite(row["fid"]) and 0.0 <= row["class_match"] <= 1.0
    assert np.isfinite(row["clip_score"]) and row["clip_score_se"] > 0
    assert json.loads((tmp_path / "cells" / "text_ddim2_eta0_classifier_free2.json").read_text())["clip_score"] == row["clip_score"]


def test_a_study_recaptions_its_split_for_each_text_model():
    """A study measures every model on one held-out split; a text model reads it captioned by its own
    tokenizer (``measure.split_for``: the ids its own data loading gives), whatever ids the split
    carried; a model that reads no text gets the split unchanged."""
    from experiments.studies import measure
    from tiny_configs import tiny_text_config
    config = tiny_text_config()
    own = build.load_data(config)[1]
    foreign = dataclasses.replace(own, tokens=np.zeros_like(own.tokens))
    np.testing.assert_array_equal(measure.split_for(config, foreign).tokens, own.tokens)
    config.model.context_encoder, config.data.captions = "", ""
    assert measure.split_for(config, foreign) is foreign
