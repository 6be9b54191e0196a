"""The CSR study on the toy world (issue 14; the paper's Tables 6, 7 and 10 in miniature), from nothing.

Stage 0 pretrains the parts DEEM takes as given (toy CLIP, toy Stable Diffusion, toy LM, with the recipe the
`--clip-*` / `--sd-*` settings give; a part already built with that recipe is reused, one built with another is
refused), builds the data (stage I captions, stage II instructions, half of them in Figure 8's layout) and the
benchmarks (toy RobustVQA built by `build-robustvqa` with the toy CLIP on the renditions, toy POPE, toy VQA on
photographs of the test split), assembles DEEM with `from_components`, then for every seed and λ_CSR runs stage I
and stage II through `python -m trainers.train_deem` (the shipped recipes, scaled down by flags only) and
evaluates both checkpoints with the real evaluators, plus the CSR path's reconstruction error.

    python -m toyworld.study --output-dir outputs/toy-study                # λ_CSR 0 vs 5, seeds 0 1 2
    python -m toyworld.study --output-dir outputs/toy-study --lambdas 0 1 5 10   # + the λ ablation
    scripts/toy_study.sh outputs/toy-study     # the study in docs/: the first stage-0 recipe, pinned by flags

Everything lands under --output-dir (stage0/, data/, bench/, runs/<λ>-<seed>/stage{1,2}/, results.json);
`python -m toyworld.study_report` turns results.json into the table, the plot and the verdict.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .clip import POOLS
from .renditions import ROBUSTVQA_SOURCES

STAGE0 = {"clip": "toyworld.clip", "lm": "toyworld.language_model", "sd": "toyworld.diffusion"}
BENCHMARKS = ("robustvqa", "pope", "vqav2")


@dataclass
class StudySettings:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    lambdas: list[float] = field(default_factory=lambda: [5.0, 0.0])
    stage1_steps: int = 200
    # Stage II is where the toy DEEM learns to read its image tokens: held-out answers start to depend on the image
    # after ~300-400 steps of 16 at these rates (measured), so it runs well past that.
    stage2_steps: int = 1500
    batch_size: int = 16
    # Stage I at the recipe's own rates: x10 (1e-3) collapsed the image tokens to a constant soft prompt for the
    # frozen LLM (their spread across images fell from 21 % to 3 % in 300 steps; 12 % after 150 steps at 1e-4).
    stage1_lr: float = 1e-4
    stage2_lr: float = 1e-3  # stage II: image side 1e-5 -> 1e-3, LLM 1e-6 -> 1e-4 (LLM at 1e-3: no faster)
    stage1_rows: int = 1600
    stage2_rows: int = 4000
    eval_images: int = 48  # test photographs for VQA and POPE
    robustvqa_per_class: int = 4  # per shape and source (split over its rendition kinds), before CLIP's filter
    data_seed: int = 0
    stage2_layout: str = "mixed"  # half plain LLaVA turns, half Figure 8's layout (what the evaluation asks)
    # A constant rate after a short warm-up: learning to read the image tokens starts only after a plateau of a few
    # hundred steps at the answer prior, and the recipes' cosine decay over a short run ended it before it began.
    lr_scheduler: str = "constant_with_warmup"
    warmup_steps: int = 30
    # Stage 0's recipe, passed to its scripts (their defaults). The first study ran on open_clip's average pooling,
    # timm's 1e-6 layer scale and 2,000 UNet steps: a CLIP at 0.20 zero-shot on shapes and an SD that drew blobs.
    clip_pool: str = field(default="max", metadata={"choices": POOLS})
    clip_layer_scale_init: float = 1.0
    sd_unet_steps: int = 8000


# What a settings record written before a setting existed was made with (older study folders lack these keys).
SETTINGS_BEFORE_RECORDED = {"clip_pool": "avg", "clip_layer_scale_init": 1e-6, "sd_unet_steps": 2000}


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def stage0_flags(settings: StudySettings) -> dict[str, list[str]]:
    """Each stage-0 script's command-line flags for the study's recipe."""
    return {"clip": ["--pool", settings.clip_pool, "--layer-scale-init", repr(settings.clip_layer_scale_init)],
            "lm": [], "sd": ["--unet-steps", str(settings.sd_unet_steps)]}


def stage0_mismatches(name: str, report: dict[str, Any], settings: StudySettings) -> list[str]:
    """How a built part's report differs from the study's recipe (a CLIP saved before the options were recorded
    used open_clip's average pooling and timm's 1e-6 layer scale; None in a report is timm's 1e-6 too)."""
    first = SETTINGS_BEFORE_RECORDED
    if name == "clip":
        built = {"clip_pool": report.get("pool", first["clip_pool"]),
                 "clip_layer_scale_init": report.get("layer_scale_init") or first["clip_layer_scale_init"]}
    elif name == "sd":
        built = {"sd_unet_steps": report["unet"]["steps"]}
    else:
        built = {}
    return [f"{key} {value!r} there, {getattr(settings, key)!r} asked" for key, value in built.items()
            if value != getattr(settings, key)]


def run_stage0(root: Path, settings: StudySettings) -> dict[str, Path]:
    """The three parts, each by its own script (a subprocess with its log); a part already built with the study's
    recipe is reused, one built with another is refused."""
    parts = {name: root / "stage0" / name for name in STAGE0}
    refused = []  # every built part checked before anything is built
    for name, folder in parts.items():
        if (folder / "report.json").exists():
            mismatches = stage0_mismatches(name, json.loads((folder / "report.json").read_text()), settings)
            if mismatches:
                refused.append(f"{folder} was built with another recipe: {'; '.join(mismatches)}")
    if refused:
        raise ValueError(". ".join(refused) + "; use a new --output-dir, the folder's recipe, or delete a part to "
                         "rebuild it")
    for name, module in STAGE0.items():
        folder = parts[name]
        if not (folder / "report.json").exists():
            _log(f"stage 0: {module}")
            folder.parent.mkdir(parents=True, exist_ok=True)
            with open(root / "stage0" / f"{name}.log", "w") as log:
                subprocess.run([sys.executable, "-m", module, "--output-dir", str(folder), *stage0_flags(settings)[name]],
                               check=True, stdout=log, stderr=subprocess.STDOUT)
    return parts


def build_data(root: Path, settings: StudySettings) -> dict[str, Path]:
    """Training sets (save_to_disk folders for `--dataset`) and benchmark files; each built once."""
    from .datasets import instructions, photographs, write_pope, write_vqa

    data = {"stage1": root / "data" / "stage1", "stage2": root / "data" / "stage2"}
    if not data["stage1"].exists():
        _log("data: stage I captions")
        photographs("train", num_rows=settings.stage1_rows, seed=settings.data_seed).save_to_disk(data["stage1"])
    if not data["stage2"].exists():
        _log("data: stage II instructions")
        instructions("train", num_rows=settings.stage2_rows, seed=settings.data_seed,
                     layout=settings.stage2_layout).save_to_disk(data["stage2"])
    bench = {"pope": root / "bench" / "pope", "vqav2": root / "bench" / "vqa" / "toy_vqa_all.jsonl"}
    if not bench["pope"].exists():
        _log("benchmarks: POPE, VQA")
        write_pope(bench["pope"], num_images=settings.eval_images, seed=settings.data_seed)
        write_vqa(bench["vqav2"].parent, num_images=settings.eval_images, seed=settings.data_seed)
    return {**data, **bench}


def build_robustvqa(root: Path, clip: Path, settings: StudySettings) -> Path:
    """Toy RobustVQA: one-object renditions in class folders per source (R / A / V), kept where the toy CLIP is
    wrong, by the project's `build-robustvqa` (the paper's way); the three sources in one file."""
    from evaluation.__main__ import build

    from .clip import model_name
    from .datasets import export_class_folders

    output = root / "bench" / "robustvqa.jsonl"
    if output.exists():
        return output
    rows = []
    for source, kinds in ROBUSTVQA_SOURCES.items():
        folder = (root / "bench" / "robustvqa" / source).resolve()
        per_kind = max(1, settings.robustvqa_per_class * 3 // len(kinds))
        for kind in kinds:
            export_class_folders(folder, kind=kind, num_per_class=per_kind, seed=settings.data_seed)
        part = root / "bench" / f"robustvqa_{source}.jsonl"
        build(["--source", source, "--images", str(folder), "--output", str(part), "--clip-model",
               model_name(clip), "--clip-pretrained", "", "--classes", str(folder / "classes.json")])
        rows += part.read_text().splitlines()
    output.write_text("".join(row + "\n" for row in rows))
    return output


def train_stage(stage: str, init: Path, output: Path, data: Path, csr: float, seed: int, steps: int,
                settings: StudySettings, lr: float) -> Path:
    """One stage through the training script, in this process (its argv is the command line a user would type)."""
    from trainers.train_deem import main as train_deem

    if (output / "model.safetensors").exists():
        return output
    argv = ["--stage", stage, "--model_name_or_path", str(init), "--dataset", str(data), "--output_dir", str(output),
            "--image_size", "64", "--csr_loss_weight", str(csr), "--max_steps", str(steps),
            "--per_device_train_batch_size", str(settings.batch_size), "--learning_rate", str(lr),
            "--lr_scheduler_type", settings.lr_scheduler, "--warmup_steps", str(settings.warmup_steps),
            "--seed", str(seed), "--data_seed", str(seed), "--logging_steps", "20", "--save_strategy", "no",
            "--report_to", "none", "--use_cpu", "--dataloader_num_workers", "0", "--dtype", "float32",
            "--disable_tqdm", "true"]
    _log(f"train: python -m trainers.train_deem {' '.join(argv)}")
    train_deem(argv)
    return output


def evaluate(models: dict[str, Path], bench: dict[str, Path], results_dir: Path) -> dict[str, dict[str, Any]]:
    """Every benchmark on every model with the project's evaluators (Figure 8 prompts, greedy); the summaries
    are written under results_dir as `python -m evaluation` writes them."""
    from evaluation.answering import ImageQuestionAnswerer
    from evaluation.benchmarks import load_benchmark, run_benchmark
    from evaluation.report import run_metadata, save_result

    scores: dict[str, dict[str, Any]] = {name: {} for name in models}
    loaded = {benchmark: load_benchmark(benchmark, bench[benchmark]) for benchmark in BENCHMARKS}
    for name, folder in models.items():
        loaded_model = ImageQuestionAnswerer(folder, max_new_tokens=8, batch_size=16, prompt="paper")
        for benchmark in BENCHMARKS:
            answerer = loaded_model.for_task(benchmark)  # one load per checkpoint, each benchmark's own prompt
            result = run_benchmark(loaded[benchmark], answerer, str(folder))
            result.prompt = "paper"
            save_result(result, results_dir, run_metadata(folder, answerer.generation_kwargs, "paper"))
            scores[name][benchmark] = {k: v for k, v in result.scores.items() if isinstance(v, (int, float))}
            _log(f"{name} {benchmark}: {scores[name][benchmark].get('accuracy')}")
    return scores


def merged_settings(previous: dict[str, Any] | None, settings: StudySettings) -> dict[str, Any]:
    """The settings record of a study folder that another invocation adds runs to (more seeds, the λ ablation):
    seeds and λs accumulate; every other setting must be the one the folder's runs were made with, or their
    numbers would not be comparable."""
    current = asdict(settings)
    if not previous:
        return current
    previous = {**SETTINGS_BEFORE_RECORDED, **previous}
    differing = sorted(key for key in current if key not in ("seeds", "lambdas") and previous.get(key) != current[key])
    if differing:
        raise ValueError("this study folder's runs were made with other settings: " + ", ".join(
            f"{key} {previous.get(key)!r} there, {current[key]!r} now" for key in differing)
            + "; use a new --output-dir or the same settings")
    for key in ("seeds", "lambdas"):
        current[key] = previous[key] + [value for value in current[key] if value not in previous[key]]
    return current


def run_study(output_dir: str | Path, settings: StudySettings) -> dict[str, Any]:
    from .assemble import assemble
    from .quality import reconstruction_mse

    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    start = time.time()
    torch.set_num_threads(2)
    results_path = root / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": {}}
    results["settings"] = merged_settings(results.get("settings"), settings)  # refuses before building anything
    parts = run_stage0(root, settings)
    data = build_data(root, settings)
    data["robustvqa"] = build_robustvqa(root, parts["clip"], settings)
    for seed in settings.seeds:
        init = root / "runs" / f"init-{seed}"
        if not (init / "model.safetensors").exists():
            assemble(parts["clip"], parts["lm"], parts["sd"], seed=seed).save_pretrained(init)
        for csr in settings.lambdas:
            name = f"csr{csr:g}-seed{seed}"
            if name in results["runs"]:
                continue
            run = root / "runs" / name
            run_start = time.time()
            stage1 = train_stage("stage1", init, run / "stage1", data["stage1"], csr, seed, settings.stage1_steps,
                                 settings, settings.stage1_lr)
            stage2 = train_stage("stage2", stage1, run / "stage2", data["stage2"], csr, seed, settings.stage2_steps,
                                 settings, settings.stage2_lr)
            train_seconds = time.time() - run_start
            scores = evaluate({"stage1": stage1, "stage2": stage2}, data, root / "evaluation")
            for stage, folder in (("stage1", stage1), ("stage2", stage2)):
                scores[stage]["reconstruction_mse"] = reconstruction_mse(folder, num_images=16)
            results["runs"][name] = {"csr_loss_weight": csr, "seed": seed, "scores": scores,
                                     "train_seconds": round(train_seconds, 1),
                                     "seconds": round(time.time() - run_start, 1)}
            results_path.write_text(json.dumps(results, indent=2))  # after every run: an interrupted study resumes
            _log(f"{name}: {json.dumps(scores)}")
    results["total_seconds_this_invocation"] = round(time.time() - start, 1)
    results_path.write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m toyworld.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--docs-dir", default=None, help="also write the table and the plot here (e.g. docs)")
    defaults = StudySettings()
    for setting in fields(defaults):
        flag, value = "--" + setting.name.replace("_", "-"), getattr(defaults, setting.name)
        if isinstance(value, list):
            parser.add_argument(flag, type=type(value[0]), nargs="+", default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value, choices=setting.metadata.get("choices"))
    args = vars(parser.parse_args(argv))
    output_dir, docs_dir = args.pop("output_dir"), args.pop("docs_dir")
    results = run_study(output_dir, StudySettings(**args))
    from .study_report import write_report

    print(write_report(output_dir, docs_dir))
    return results


if __name__ == "__main__":
    main()
