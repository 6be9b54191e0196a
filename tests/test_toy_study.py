"""The toy study's plumbing (issue 14): its report (mean ± std, verdict, plot), the ship script, the training
script's loss-weight flags and the Figure 8 conversation layout."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from toyworld.datasets import base_scene, instructions
from toyworld.study import StudySettings, merged_settings, run_stage0, run_study, stage0_flags
from toyworld.study_report import write_report
from toyworld.text import paper_conversation
from trainers.train_deem import StageArguments


def _results(folder, on_scores, off_scores):
    runs = {}
    for seed, (on, off) in enumerate(zip(on_scores, off_scores)):
        for lam, value in ((5.0, on), (0.0, off)):
            scores = {"robustvqa": {"accuracy": value}, "pope": {"accuracy": 0.5, "f1": 0.6, "yes_ratio": 1.0},
                      "vqav2": {"accuracy": 0.3}, "reconstruction_mse": 0.03}
            runs[f"csr{lam:g}-seed{seed}"] = {"csr_loss_weight": lam, "seed": seed, "seconds": 60,
                                              "scores": {"stage1": scores, "stage2": scores}}
    (folder / "results.json").write_text(json.dumps({"runs": runs, "settings": {}}))


def test_report_gives_mean_std_a_verdict_from_the_spread_and_a_plot(tmp_path):
    _results(tmp_path, on_scores=[0.70, 0.72, 0.71], off_scores=[0.50, 0.52, 0.51])
    text = write_report(tmp_path, tmp_path / "docs")
    assert "| stage | metric | λ_CSR = 0 (n = 3) | λ_CSR = 5 (n = 3) |" in text
    assert "| stage2 | RobustVQA-toy acc | 0.510 ± 0.010 | 0.710 ± 0.010 |" in text  # λ 0, then 5
    assert "stage2, RobustVQA-toy acc: CSR on is better (0.710 vs 0.510" in text
    assert "stage2, VQA-toy acc (in-distribution): no difference beyond the seeds' spread" in text
    assert (tmp_path / "docs" / "toy_study_results.md").read_text() == text
    with_mse = Image.open(tmp_path / "docs" / "toy_study.png").size[0]
    assert with_mse > 300
    results = json.loads((tmp_path / "results.json").read_text())
    for run in results["runs"].values():
        for scores in run["scores"].values():
            scores.pop("reconstruction_mse")
    (tmp_path / "results.json").write_text(json.dumps(results))
    write_report(tmp_path, tmp_path / "docs")
    assert Image.open(tmp_path / "docs" / "toy_study.png").size[0] < with_mse  # its own panel, only when measured


def test_report_calls_an_overlapping_difference_no_difference(tmp_path):
    _results(tmp_path, on_scores=[0.4, 0.7, 0.55], off_scores=[0.5, 0.6, 0.45])
    assert "stage1, RobustVQA-toy acc: no difference beyond the seeds' spread" in write_report(tmp_path)


def test_report_reads_a_lower_reconstruction_error_as_better(tmp_path):
    _results(tmp_path, on_scores=[0.5, 0.5, 0.5], off_scores=[0.5, 0.5, 0.5])
    results = json.loads((tmp_path / "results.json").read_text())
    for run in results["runs"].values():  # CSR on rebuilds with a tenth of the error, off does not
        mse = [0.004, 0.005, 0.006][run["seed"]] if run["csr_loss_weight"] == 5.0 else [0.04, 0.05, 0.06][run["seed"]]
        run["scores"] = {stage: {**scores, "reconstruction_mse": mse} for stage, scores in run["scores"].items()}
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert "stage2, CSR reconstruction MSE: CSR on is better (0.005 vs 0.050" in write_report(tmp_path)
    for run in results["runs"].values():  # swapped: CSR on has the larger error
        for scores in run["scores"].values():
            scores["reconstruction_mse"] = 0.05 if run["csr_loss_weight"] == 5.0 else 0.005 + 0.001 * run["seed"]
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert "stage2, CSR reconstruction MSE: CSR on is worse (0.050 vs 0.006" in write_report(tmp_path)


def test_report_judges_nothing_from_one_seed(tmp_path):
    _results(tmp_path, on_scores=[0.7], off_scores=[0.5])
    text = write_report(tmp_path)
    assert "stage1, RobustVQA-toy acc: one seed, no spread to judge by (0.700 vs 0.500, difference +0.200)." in text
    assert "CSR on is" not in text and "beyond the seeds' spread" not in text


def test_ship_writes_float16_copies_without_code(tmp_path, tiny_model, processor):
    from toyworld.ship import ship

    study = tmp_path / "study"
    tiny_model.processor = processor
    tiny_model.save_pretrained(study / "runs" / "csr5-seed0" / "stage2")
    for part in ("clip", "lm", "sd/unet"):
        (study / "stage0" / part).mkdir(parents=True)
        torch.manual_seed(0)
        from safetensors.torch import save_file

        save_file({"w": torch.randn(4, 4)}, study / "stage0" / part / "model.safetensors")
        (study / "stage0" / part / "config.json").write_text(json.dumps({"torch_dtype": "float32"}))
    (study / "results.json").write_text(json.dumps({"settings": {"seeds": [0]}, "runs": {}}))
    with pytest.raises(ValueError, match="align_steps must be a whole number"):
        ship(study, "csr5-seed0", tmp_path / "shipped", align_steps=-1)
    sizes = ship(study, "csr5-seed0", tmp_path / "shipped", align_steps=0)  # the alignment has its own test
    out = tmp_path / "shipped"
    assert not list(out.glob("*.py")) and "auto_map" not in json.loads((out / "config.json").read_text())
    assert "auto_map" not in (out / "processor_config.json").read_text()  # nor in the nested image processor
    for shipped_file in out.rglob("*.json"):  # the same in every rebuild: no paths of the machine that shipped it
        assert str(tmp_path) not in shipped_file.read_text() and "local_files_only" not in shipped_file.read_text()
    assert json.loads((out / "config.json").read_text())["text_config"]["_name_or_path"] == "stage0/lm"
    assert all(v.dtype == torch.float16 for v in load_file(out / "model.safetensors").values() if v.is_floating_point())
    assert load_file(out / "stage0" / "sd" / "unet" / "model.safetensors")["w"].dtype == torch.float16
    assert json.loads((out / "stage0" / "lm" / "config.json").read_text())["torch_dtype"] == "float16"
    assert sizes["total"] > 0
    card = (out / "README.md").read_text()
    assert "run `csr5-seed0`" in card and str(tmp_path) not in card  # no paths of the machine that shipped it
    assert "aligned" not in card
    from modeling_deem import DeemForConditionalGeneration

    loaded = DeemForConditionalGeneration.from_pretrained(out)  # float32 for CPU, float16's precision
    original = dict(tiny_model.named_parameters())
    for name, parameter in loaded.named_parameters():
        assert parameter.dtype == torch.float32, name
        assert torch.equal(parameter, original[name].detach().half().float()), name


def test_loss_weight_flags_override_the_stage_and_refuse_negatives():
    recipe = StageArguments(stage="stage1", csr_loss_weight=0.0).recipe()
    assert recipe.csr_loss_weight == 0.0 and recipe.nip_loss_weight == 5.0 and recipe.name == "stage1"
    with pytest.raises(ValueError, match="must be >= 0"):
        StageArguments(stage="stage2", nip_loss_weight=-1.0).recipe()


def test_rate_multipliers_raise_one_group_and_leave_the_others_where_learning_rate_puts_them(tiny_model, tmp_path):
    from trainers import DeemTrainer
    from trainers.stages import parameter_group

    recipe = StageArguments(stage="stage2", learning_rate_multipliers="language_model=100, mmfs=2").recipe()
    assert recipe.learning_rates["language_model"] == pytest.approx(1e-4)  # 1e-6 x 100, now the highest
    assert recipe.learning_rates["image_side"] == pytest.approx(1e-5) and recipe.peak_learning_rate == 1e-5
    args = recipe.training_arguments(str(tmp_path), learning_rate=1e-3, max_steps=1, use_cpu=True, report_to="none")
    trainer = DeemTrainer(model=tiny_model, args=args, stage=recipe)
    trainer.create_optimizer()
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    rates = {parameter_group(names[id(p)]): group["lr"] for group in trainer.optimizer.param_groups
             for p in group["params"]}
    # --learning_rate 1e-3 is 100x the recipe's 1e-5: the image side at 1e-3 as without multipliers, the LLM at
    # 100 x (100 x 1e-6), MMFS at 2 x (100 x 5e-6).
    assert rates["image_side"] == pytest.approx(1e-3) and rates["language_model"] == pytest.approx(1e-2)
    assert rates["mmfs"] == pytest.approx(1e-3) and rates["mmfs_gate"] == pytest.approx(5e-4)


@pytest.mark.parametrize("flag, message", [
    ("vision=2", "Unknown parameter group 'vision'"),
    ("vision_trunk=2", "'vision_trunk' is frozen in stage2"),
    ("language_model=0", "must be > 0"),
    ("language_model=fast", "'language_model=fast' is not 'group=number'"),
    ("language_model", "'language_model' is not 'group=number'"),
])
def test_bad_rate_multipliers_are_refused_by_name(flag, message):
    with pytest.raises(ValueError, match=message):
        StageArguments(stage="stage2", learning_rate_multipliers=flag).recipe()


def test_paper_layout_conversations_use_figure_8_prompts():
    turns = paper_conversation(base_scene(3), random.Random(0))
    assert turns[0]["value"].startswith("Based on the image, please answer the question.")
    assert "<image>" in turns[0]["value"] and all("<image>" not in t["value"] for t in turns[1:])
    assert all(t["value"].startswith("The answer is ") for t in turns[1::2])
    rows = instructions(num_rows=4, layout="mixed")
    assert {m["role"] for m in rows[0]["messages"]} == {"user", "assistant"}
    with pytest.raises(ValueError, match="Unknown conversation layout"):
        instructions(num_rows=1, layout="figure8")


def test_reconstruction_mse_compares_held_out_photos_with_their_csr_rebuilds(tiny_model, processor):
    from toyworld.quality import reconstruction_mse

    tiny_model.processor = processor
    error = reconstruction_mse(tiny_model, num_images=2, steps=2)
    assert 0.0 < error < 1.0
    assert reconstruction_mse(tiny_model, num_images=2, steps=2) == error  # seeded sampling


def test_nip_condition_gap_compares_own_and_other_captions_under_the_same_noise(tiny_model, processor):
    from toyworld.quality import nip_condition_gap

    tiny_model.processor = processor
    weights = tiny_model.config.nip_loss_weight, tiny_model.config.csr_loss_weight
    gap = nip_condition_gap(tiny_model, num_images=3, repeats=1)
    assert gap == nip_condition_gap(tiny_model, num_images=3, repeats=1)  # same timesteps and noise every call
    assert gap["own"] > 0 and gap["other"] > 0 and gap["gap"] == gap["other"] - gap["own"] != 0.0
    assert (tiny_model.config.nip_loss_weight, tiny_model.config.csr_loss_weight) == weights
    with torch.no_grad():  # a resampler whose queries never read the LLM's states: one condition for any caption
        for name, parameter in tiny_model.condition_resampler.named_parameters():
            if "crossattention.output.dense" in name:
                parameter.zero_()
    assert nip_condition_gap(tiny_model, num_images=3, repeats=1)["gap"] == 0.0
    with pytest.raises(ValueError, match="at least 2 images"):
        nip_condition_gap(tiny_model, num_images=1)


def test_a_second_invocation_adds_seeds_and_lambdas_but_refuses_other_settings(tmp_path):
    first = merged_settings(None, StudySettings(seeds=[0, 1, 2], lambdas=[5.0, 0.0]))
    ablation = merged_settings(first, StudySettings(seeds=[0], lambdas=[1.0, 10.0]))
    assert ablation["seeds"] == [0, 1, 2] and ablation["lambdas"] == [5.0, 0.0, 1.0, 10.0]
    with pytest.raises(ValueError, match="stage2_steps 1500 there, 100 now"):
        merged_settings(first, StudySettings(seeds=[0], stage2_steps=100))
    (tmp_path / "results.json").write_text(json.dumps({"runs": {}, "settings": first}))
    with pytest.raises(ValueError, match="batch_size"):  # before any stage-0 part or dataset is built
        run_study(tmp_path, StudySettings(batch_size=8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


FIRST_RECIPE = {"clip_pool": "avg", "clip_layer_scale_init": 1e-6, "sd_unet_steps": 2000}


def test_a_settings_record_from_before_the_stage0_recipe_was_recorded_means_the_first_recipe():
    old = merged_settings(None, StudySettings(seeds=[0], lambdas=[5.0]))
    for key in FIRST_RECIPE:
        old.pop(key)
    assert merged_settings(old, StudySettings(seeds=[1], lambdas=[5.0], **FIRST_RECIPE))["seeds"] == [0, 1]
    with pytest.raises(ValueError, match="sd_unet_steps 2000 there, 8000 now"):
        merged_settings(old, StudySettings(seeds=[1], lambdas=[5.0]))


def test_stage0_parts_built_with_another_recipe_are_refused_before_anything_is_built(tmp_path):
    clip = tmp_path / "stage0" / "clip"
    clip.mkdir(parents=True)
    (clip / "report.json").write_text(json.dumps({"steps": 3000}))  # an older CLIP: average pooling, timm's 1e-6
    sd = tmp_path / "stage0" / "sd"
    sd.mkdir()
    (sd / "report.json").write_text(json.dumps({"unet": {"steps": 8000}}))
    with pytest.raises(ValueError, match=r"clip was built with another recipe: clip_pool 'avg' there, 'max' asked; "
                                         r"clip_layer_scale_init 1e-06 there, 1.0 asked"):
        run_study(tmp_path, StudySettings())
    assert not (tmp_path / "stage0" / "lm").exists() and not (tmp_path / "data").exists()
    with pytest.raises(ValueError, match="sd_unet_steps 8000 there, 2000 asked"):
        run_stage0(tmp_path, StudySettings(**FIRST_RECIPE))
    assert not (tmp_path / "stage0" / "lm").exists()


def test_the_study_passes_its_stage0_recipe_to_the_scripts_as_flags():
    flags = stage0_flags(StudySettings(**FIRST_RECIPE))
    assert flags["clip"] == ["--pool", "avg", "--layer-scale-init", "1e-06"] and flags["sd"] == ["--unet-steps", "2000"]


def test_every_stage0_part_built_with_another_recipe_is_named(tmp_path):
    for name, report in (("clip", {"pool": "avg", "layer_scale_init": None}), ("sd", {"unet": {"steps": 2000}})):
        (tmp_path / "stage0" / name).mkdir(parents=True)
        (tmp_path / "stage0" / name / "report.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match=r"clip was built .*clip_pool 'avg'.*sd was built .*sd_unet_steps 2000"):
        run_stage0(tmp_path, StudySettings())


def test_align_shipped_changes_only_the_condition_mapper_and_records_it(tmp_path):
    """On a copy of the real deem-toy, two steps: the mapper learns, every other shipped tensor keeps its bytes,
    the folder still loads as float32 from float16 files, and stage0/settings.json records the alignment."""
    from toyworld.ship import ALIGNMENT, align_shipped

    shipped = Path(__file__).resolve().parents[1] / "hub_configs" / "deem-toy"
    out = Path(shutil.copytree(shipped, tmp_path / "deem-toy"))
    with pytest.raises(ValueError, match="already aligned"):  # the shipped model is
        align_shipped(out, steps=2)
    record = align_shipped(out, steps=2, force=True)
    assert record["steps"] == 2 and record["learning_rate"] == ALIGNMENT["learning_rate"] and record["cpu"]
    assert json.loads((out / "stage0" / "settings.json").read_text())["condition_alignment"] == record
    before, after = load_file(shipped / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {name.split(".")[0] for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"context_proj", "condition_resampler"}
    assert all(v.dtype == torch.float16 for v in after.values() if v.is_floating_point())
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32" and config["diffusion_model_name_or_path"] == "stage0/sd"
    assert not list(out.glob("*.py")) and "aligned to the toy SD's text encoder" in (out / "README.md").read_text()
    with pytest.raises(ValueError, match="whole number ≥ 1"):
        align_shipped(out, steps=0, force=True)
