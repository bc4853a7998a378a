"""experiments.reproduce on a tiny study: models trained once, cells measured once, a report with
its table, plot, claims, pictures and commands; and every shipped study builds valid configs."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import build, studies
from experiments.latent import hooks
from experiments.studies import plan

REPO = Path(__file__).resolve().parents[1]

TINY_STUDY = textwrap.dedent('''
    from configs.studies import base

    def get_config():
        s = base.get_config()
        s.title, s.paper, s.dataset = "tiny", "a test", "mnist"
        s.models = dict(linear={}, cosine=dict(diffusion=dict(schedule="cosine")))
        s.cells = tuple(dict(model=m, sampler="ddim", steps=2, eta=eta, row=m, col=f"eta {eta:g}")
                        for m in ("linear", "cosine") for eta in (0.0, 1.0))
        s.metrics = ("fid", "is", "nll")
        s.plot = dict(x="eta", y="fid", series="row", logx=False)
        s.reconstruct_steps = 2
        s.num_samples, s.nll_examples = 16, 8
        s.noisy_classifier, s.classifier_steps = "linear", 2
        s.budget = dict(model=dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                   attention_resolutions=(14,), norm_groups=4),
                        train=dict(batch_size=16, num_steps=4, log_every=1, checkpoint_every=2, sample_every=1000),
                        sample=dict(num=8, steps=2), optim=dict(warmup_steps=2), diffusion=dict(num_steps=100))
        return s

    def claims(results, nll):
        return [("cosine beats linear on NLL", nll["cosine"]["bits_per_dim"] < nll["linear"]["bits_per_dim"], "x")]
''')


@pytest.mark.system
def test_a_study_trains_measures_reports_and_resumes(tmp_path):
    study_file = tmp_path / "tiny_study.py"
    study_file.write_text(TINY_STUDY)
    workdir = tmp_path / "study"
    report = studies.run_study(plan.load_study(str(study_file)), workdir, batch=8).read_text()
    cells = sorted((workdir / "cells").glob("*.json"))
    assert [c.stem for c in cells] == ["cosine_ddim2_eta0", "cosine_ddim2_eta1", "linear_ddim2_eta0", "linear_ddim2_eta1"]
    for c in cells:
        row = json.loads(c.read_text())
        assert row["num"] == 16 and np.isfinite(row["fid"]) and row["fid_se"] > 0 and 1.0 <= row["is_mean"] <= 10.0
    assert "| | eta 0 | eta 1 |" in report and report.count("\n| linear |") == 2    # FID table and NLL table
    assert ("✓ reproduced: cosine beats linear" in report) or ("✗ not reproduced: cosine beats linear" in report)
    assert "| largest L_t |" in report and report.count("(t = ") == 2
    for picture in ("plot.png", "vlb_terms.png", "linear_samples.png", "linear_reconstruction.png",
                    "cosine_reconstruction.png"):
        assert (workdir / picture).stat().st_size > 1000 and f"({picture})" in report
    assert "linear: 64 samples, DDIM 2 (η = 0):" in report and "2-step DDIM latents" in report
    assert "--config.diffusion.schedule=cosine" in report and "python -m experiments.evaluate" in report
    assert (f"python -m experiments.train_classifier --config configs/noisy_classifier_mnist.py "
            f"--workdir {workdir / 'noisy_classifier'} ") in report and "--config.train.num_steps=2" in report
    stamps = {p: p.stat().st_mtime_ns for p in cells + sorted((workdir / "models").rglob("checkpoints/*/*"))
              + sorted((workdir / "noisy_classifier").rglob("*.msgpack")) + sorted((workdir / "models").rglob("eval/nll.json"))}
    studies.run_study(plan.load_study(str(study_file)), workdir, batch=8)     # rerun: nothing redone
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    study_file.write_text(TINY_STUDY.replace('schedule="cosine"', 'schedule="linear"'))   # an edited study
    with pytest.raises(ValueError, match="(?s)different model or schedule.*diffusion.schedule: checkpoint 'cosine'"):
        studies.run_study(plan.load_study(str(study_file)), workdir, batch=8)


@pytest.mark.parametrize("name", ["ddim_table1", "schedules_objectives", "guidance", "simplified_ddpm"])
def test_every_shipped_study_builds_valid_configs(name):
    study = plan.load_study(name).get_config()
    for dataset in plan.DATASETS:
        for scale in ("default", "paper"):
            for model in study.models:
                build.validate(plan.model_config(study, model, dataset, scale))
    assert {c["model"] for c in study.cells} == set(study.models)


def test_claims_read_the_table_they_are_given():
    module = plan.load_study("ddim_table1")
    cells = module.get_config().cells
    fid = lambda c: c["steps"] ** -0.5 * (10 + 40 * (c["sampler"] == "ddpm") + 20 * c.get("eta", 0.0))
    results = [dict(c, fid=fid(c) if c["steps"] < 1000 else 1.0 + (c["sampler"] != "ddpm")) for c in cells]
    assert [held for _, held, _ in module.claims(results, {})] == [True, True, True]
    results = [dict(r, fid=-r["fid"]) for r in results]
    assert [held for _, held, _ in module.claims(results, {})] == [False, False, False]


def test_unknown_study_is_named():
    with pytest.raises(ValueError, match="unknown study 'ddim_tabel1'.*ddim_table1"):
        plan.load_study("ddim_tabel1")


def test_latent_diffusion_study_trains_each_autoencoder_first(tmp_path):
    module = plan.load_study("latent_diffusion")
    study_plan = plan.make_plan(module, tmp_path)
    assert sorted(study_plan.autoencoders) == ["kl_f2", "kl_f4", "vq_f4"]
    for name, job in study_plan.autoencoders.items():
        assert job.entry_point == "train_autoencoder" and job.workdir == tmp_path / "autoencoders" / name
        assert job.config_file == f"configs/latent/autoencoder_{name}.py" and job.config.data.autoencoder == ""
        assert study_plan.models[name].config.data.autoencoder == str(job.workdir)
        assert job.config.train.num_steps == module.AUTOENCODER_STEPS      # the study's, not the config's 5,000
    pixels = (study_plan.models["pixel"], study_plan.feature_classifier)
    assert [t.config.data.autoencoder for t in pixels] == ["", ""]
    assert study_plan.models["kl_f2"].config.model.attention_resolutions == (8,)
    order = [t.workdir.name for t in study_plan.trainings]      # rFID reads the classifier; models encode
    assert order[:4] == ["feature_classifier", "kl_f2", "kl_f4", "vq_f4"]
    assert sorted(order[4:]) == ["kl_f2", "kl_f4", "pixel", "vq_f4"]
    seconds = [t.config.train.num_steps / module.STEPS_PER_S[m] for m, t in study_plan.models.items()]
    assert seconds == pytest.approx([module.TRAIN_SECONDS] * 4, abs=1)     # equal wall-clock
    assert [c["f"] for c in study_plan.cells] == [1, 2, 4, 4]
    assert any(c.startswith("python -m experiments.train_autoencoder --config configs/latent/autoencoder_vq_f4.py")
               and f"--config.train.num_steps={module.AUTOENCODER_STEPS}" in c for c in study_plan.commands)
    with pytest.raises(ValueError, match="--scale paper --dataset fashion_mnist: the study's paper-size models need "
                                         r"one of \['cifar10', 'celeba64', 'imagenet64'\]; add --dataset cifar10"):
        plan.make_plan(module, tmp_path, scale="paper")
    study = module.get_config()
    study.models.kl_f4.data.autoencoder = "kl_f8"
    with pytest.raises(ValueError, match="data.autoencoder='kl_f8', which is not one of the study's autoencoders"):
        plan.check_study(study)


@pytest.mark.parametrize("dataset", ["cifar10", "celeba64", "imagenet64"])
def test_latent_diffusion_study_at_paper_scale_trains_ldm_models(tmp_path, dataset):
    module = plan.load_study("latent_diffusion")
    study_plan = plan.make_plan(module, tmp_path, dataset=dataset, scale="paper")    # every model's config validated
    pixel = study_plan.models["pixel"]
    assert pixel.config.to_dict() == plan.DATASETS[dataset][0].get_config().to_dict()    # the dataset's paper model
    assert study_plan.num == 50_000 and pixel.command.endswith(f"--workdir {pixel.workdir} ")
    for name, job in study_plan.autoencoders.items():
        assert job.config_file == f"configs/latent/autoencoder_ldm_{name}.py" and job.config.train.num_steps == 100_000
        assert job.config.data.source == pixel.config.data.source and job.config.first_stage.base_channels == 128
    for name in ("kl_f2", "kl_f4", "vq_f4"):
        c = study_plan.models[name].config
        latent = hooks.latent_shape(study_plan.autoencoders[name].config)
        assert latent == (c.data.image_size // int(name[-1]),) * 2 + (3,)
        assert (c.model.base_channels, c.model.channel_mult, c.model.num_head_channels) == (224, (1, 2, 3, 4), 32)
        assert c.model.attention_resolutions == {8: (4, 2, 1), 16: (8, 4, 2), 32: (16, 8, 4)}[latent[0]]
        assert (c.diffusion.schedule, c.diffusion.loss, c.diffusion.variance) == ("ldm", "simple", "fixed_small")
        assert c.model.context_encoder == ("class_tokens" if dataset == "imagenet64" else "")
        for field in ("batch_size", "num_steps"):     # equal steps and batch: the pixel model's
            assert c.train[field] == pixel.config.train[field]
    assert [c.split(" --")[0] for c in study_plan.commands].count("python -m experiments.evaluate") == 4
    measuring = [c for c in study_plan.commands if "experiments.evaluate" in c or "train_autoencoder" in c]
    assert len(measuring) == 7 and all(c.endswith(f"--inception_weights {plan.INCEPTION_FILE}") for c in measuring)


def test_ldm_first_stage_configs_keep_ldms_settings():
    """The rates follow LDM's main.py (base rate × batch) and the losses its released configs."""
    from configs.latent import autoencoder_ldm_kl_f4, autoencoder_ldm_vq_f4
    kl, vq = autoencoder_ldm_kl_f4.get_config(), autoencoder_ldm_vq_f4.get_config()
    assert kl.optim.lr == pytest.approx(4.5e-6 * 12 * 2) and vq.optim.lr == pytest.approx(4.5e-6 * 8)  # batch 12 × 2 accumulated; 8
    t = kl.first_stage_train
    assert (t.kl_weight, t.disc_start, t.disc_weight, kl.first_stage.disc_layers) == (1e-6, 50_001, 0.5, 3)
    t = vq.first_stage_train
    assert (vq.first_stage.codebook_size, t.disc_start, t.disc_weight) == (8192, 0, 0.75)
    commitment, codebook = t.codebook_weight * t.commitment, t.codebook_weight    # taming's legacy β on the codebook
    assert (commitment, codebook) == (1.0, 0.25)

def test_latent_diffusion_papers_unet_has_ldm4s_parameter_count():
    """LDM-4's U-Net on 64×64×3 latents has 274M parameters (Rombach et al. 2022's hyperparameter table
    for its CelebA-HQ LDM-4); counted from shapes alone (jax.eval_shape, nothing compiled)."""
    module = plan.load_study("latent_diffusion")
    c = plan.DATASETS["celeba64"][0].get_config()
    c.update(module.paper_overrides("kl_f4", c))
    c.data.autoencoder, c.data.image_size = "", 64     # 256² images at f = 4
    c.model.attention_resolutions = module.ldm4_unet(64)["attention_resolutions"]
    model = build.make_model(c)
    x, t = jnp.zeros((1, 64, 64, 3)), jnp.zeros((1,), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, train=False))
    assert sum(a.size for a in jax.tree.leaves(shapes)) / 1e6 == pytest.approx(274.06, abs=0.01)


def test_a_planned_latent_unet_that_cannot_halve_its_latents_is_refused(tmp_path, monkeypatch):
    module = plan.load_study("latent_diffusion")
    ldm4_unet = module.ldm4_unet
    five_levels = lambda size: dict(ldm4_unet(size), channel_mult=(1, 2, 3, 4, 4))
    monkeypatch.setattr(module, "ldm4_unet", five_levels)
    with pytest.raises(ValueError, match=r"the 8×8×3 latents .* cannot be halved 4 times"):
        plan.make_plan(module, tmp_path, dataset="cifar10", scale="paper")
    monkeypatch.setattr(module, "ldm4_unet", lambda size: dict(ldm4_unet(size), attention_resolutions=(size * 2,)))
    with pytest.raises(ValueError, match=r"attention_resolutions=\(32,\) names \[32\], which no level .* 16×16 latents .* \[16, 8, 4, 2\]"):
        plan.make_plan(module, tmp_path, dataset="cifar10", scale="paper")


def test_a_study_on_inception_data_without_its_weights_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="cifar10 is measured with Inception-v3 features .* give --inception_weights"):
        studies.run_study(plan.load_study("latent_diffusion"), tmp_path, dataset="cifar10", scale="paper")
    assert not any(tmp_path.iterdir())


def test_plan_only_prints_the_commands_and_runs_none(tmp_path):
    workdir = tmp_path / "study"
    proc = subprocess.run([sys.executable, "-m", "experiments.reproduce", "--study", "latent_diffusion", "--scale",
                           "paper", "--dataset", "cifar10", "--workdir", str(workdir), "--plan_only",
                           "--inception_weights", "w.pth"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    expected = plan.make_plan(plan.load_study("latent_diffusion"), workdir, dataset="cifar10", scale="paper",
                              inception_weights="w.pth").commands
    assert sum(c.endswith(" --inception_weights w.pth") for c in expected) == 7
    assert proc.stdout.splitlines() == expected and not workdir.exists()


def _latent_results(case: str) -> list[dict]:
    """Synthetic rows of the latent_diffusion study. "latents win": every latent model beats pixel
    diffusion and is above its floor, f = 4 loses detail yet samples better, VQ beats KL; "pixel
    wins": pixel diffusion beats even kl_f4's and vq_f4's floors, which vq_f4 and kl_f4 sit on, f = 4
    samples worse, KL beats VQ; "even": pixel and the best latent model within 2 s.e., f = 4 neither
    loses detail nor samples differently, one model below its floor."""
    pixel_fid = {"latents win": 60.0, "pixel wins": 5.0, "even": 20.5}[case]
    rows = [dict(model="pixel", fid=pixel_fid, fid_se=1.0, train_steps=1980, sample_images_per_s=9.0)]
    table = {"latents win": (("kl_f2", 30.0, 26.7, 4.0), ("kl_f4", 20.0, 22.0, 11.0), ("vq_f4", 14.0, 21.0, 11.0)),
             "pixel wins": (("kl_f2", 9.0, 26.7, 4.0), ("kl_f4", 13.0, 22.0, 12.5), ("vq_f4", 16.0, 21.0, 15.0)),
             "even": (("kl_f2", 20.0, 22.0, 25.0), ("kl_f4", 20.5, 22.0, 20.0), ("vq_f4", 20.0, 21.0, 20.0))}[case]
    for m, fid, psnr, ae_fid in table:
        rows.append(dict(model=m, fid=fid, fid_se=1.0, train_steps={"kl_f2": 5409}.get(m, 21537),
                         sample_images_per_s=70.0, ae_psnr=psnr, ae_psnr_se=0.05, ae_rfid=ae_fid / 2, ae_rfid_se=0.3,
                         ae_fid=ae_fid, ae_fid_se=0.5))
    return [dict(r, heldout_fid=3.0, heldout_fid_se=0.4) for r in rows]


@pytest.mark.parametrize("case", ["latents win", "pixel wins", "even"])
def test_the_latent_diffusion_claims_and_findings_follow_the_figures(case):
    module = plan.load_study("latent_diffusion")
    rows = _latent_results(case)
    held = [held for _, held, _ in module.claims(rows, {})]
    assert held == [case == "latents win", True, case != "even"]
    floor, steps, detail, vq = module.findings(rows)
    assert "(the held-out images themselves: 3.00 ± 0.40)" in floor
    assert "5,409 (kl_f2, 2.7×), 21,537 (kl_f4, 10.9×)" in steps
    assert "for 4.0× the steps" in detail
    if case == "latents win":
        assert "Every latent model is above its floor by more than 2 s.e." in floor
        assert "beats pixel diffusion (60.00 ± 1.00) by more than 2 s.e." in steps
        assert "detail is lost" in detail and "Its samples are better" in detail and "costs less than" in detail
        assert "VQ better by more than 2 s.e." in vq
    elif case == "pixel wins":
        assert "kl_f4's and vq_f4's FIDs are within 2 s.e. of the floor" in floor and "below" not in floor
        assert "Pixel diffusion (5.00 ± 1.00) beats the best latent model (kl_f2, 9.00 ± 1.00)" in steps
        assert ": the extra steps did not close the gap" in steps     # 5 is not below kl_f2's floor 4 by 2 s.e.
        assert "Its samples are worse" in detail and "shows in the samples" in detail
        assert "KL better by more than 2 s.e." in vq
    else:
        assert "kl_f4's and vq_f4's FIDs are within 2 s.e. of the floor" in floor
        assert floor.endswith("kl_f2's FID is below the floor by more than 2 s.e.: for it the floor is no bound.")
        assert "are within 2 s.e." in steps
        assert "no loss of detail beyond 2 s.e. of PSNR" in detail and "no different within 2 s.e." in detail
        assert detail.endswith("the steps.")
        assert "(within 2 s.e.)" in vq


def test_the_latent_diffusion_findings_at_paper_scale_speak_of_equal_steps():
    """At --scale paper every U-Net trains the pixel model's steps: the claims and findings say so and
    no longer speak of seconds or a ratio of steps."""
    module = plan.load_study("latent_diffusion")
    rows = [dict(r, train_steps=800_000) for r in _latent_results("latents win")]
    (first, held, _), *_ = module.claims(rows, {})
    assert first.startswith("At equal training steps and batch a moderate f") and held
    floor, steps, detail, vq = module.findings(rows)
    assert steps == ("Every U-Net trained the same 800,000 steps at the same batch. The best latent model (vq_f4, "
                     "14.00 ± 1.00) beats pixel diffusion (60.00 ± 1.00) by more than 2 s.e. at equal steps.")
    assert "at the same steps: the lost detail costs less than the smaller latent gains." in detail
    assert module.claims(_latent_results("latents win"), {})[0][0].startswith("At equal training wall-clock")
    _, steps, detail, _ = module.findings([dict(r, train_steps=800_000) for r in _latent_results("pixel wins")])
    assert steps.endswith(": at equal steps the latent model does not catch up.")
    _, steps, detail, _ = module.findings([dict(r, train_steps=800_000) for r in _latent_results("even")])
    assert steps.endswith("are within 2 s.e.") and detail.endswith("at the same steps.")


def test_the_latent_diffusion_floor_says_when_the_heldout_split_is_smaller_than_the_cells():
    module = plan.load_study("latent_diffusion")
    floor, *_ = module.findings([dict(r, floor_images=10_000, num=50_000) for r in _latent_results("latents win")])
    assert "reconstructions of the 10,000 held-out images there are (fewer than the 50,000 samples" in floor
    floor, *_ = module.findings([dict(r, floor_images=500, num=500) for r in _latent_results("latents win")])
    assert "reconstructions of as many held-out images is a floor" in floor
