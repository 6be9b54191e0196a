"""Copy a study's trained toy DEEM and its stage-0 parts into the repository (`hub_configs/deem-toy/`), as float16
safetensors to keep the repository small. The DEEM folder's config still says float32, so `from_pretrained` gives
the float32 model CPU inference wants (weights rounded to float16's precision).

    python -m toyworld.ship --study outputs/toy-study --run csr5-seed0 --output hub_configs/deem-toy

By default the shipped model's generation condition is then aligned to the toy SD's text encoder
(`align_shipped`, `trainers.condition_alignment`): without it the toy DEEM's images ignore their captions.

The study reproduces everything from its seeds (`python -m toyworld.study`), so the shipped files are the same
on every run of that command with the same settings, thread count and library versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from modeling_deem import DeemForConditionalGeneration
from modeling_deem.config_only_folder import drop_code_copies

STAGE0_PARTS = ("clip", "lm", "sd")
# Condition alignment of the shipped model (GILL's mapper loss, not a paper stage): ≈ 6 minutes on 2 CPU cores.
ALIGNMENT = {"steps": 3000, "learning_rate": 3e-3, "batch_size": 64, "num_captions": 8192, "seed": 0}


def _halve_safetensors(folder: Path) -> None:
    """Every float32 tensor of every safetensors file under `folder` to float16, in place."""
    for path in folder.rglob("*.safetensors"):
        tensors = load_file(path)
        save_file({k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}, path,
                  metadata={"format": "pt"})
    for config in folder.rglob("config.json"):
        data = json.loads(config.read_text())
        for key in ("torch_dtype", "dtype"):
            if data.get(key) == "float32":
                data[key] = "float16"
        config.write_text(json.dumps(data, indent=2) + "\n")


def _shipped_provenance(config: dict) -> dict:
    """Where the parts came from, as the shipped folder holds them (`stage0/...`) instead of the study's paths on
    the machine that trained them: the same in every rebuild, and no machine's paths in a shipped file."""
    config["diffusion_model_name_or_path"] = "stage0/sd"
    config["text_config"]["_name_or_path"] = "stage0/lm"
    config["vision_config"]["open_clip_model_name"] = "local-dir:stage0/clip"
    return config


def ship(study: str | Path, run: str, output: str | Path, align_steps: int = ALIGNMENT["steps"]) -> dict[str, float]:
    """Writes `output/` (the stage-II DEEM of `run`, without the code copies: the package provides the classes)
    and `output/stage0/{clip,lm,sd}`, then (`align_steps` > 0) aligns its generation condition to the toy SD's
    text encoder (`align_shipped`); returns the sizes in MB."""
    study, output = Path(study), Path(output)
    if isinstance(align_steps, bool) or not isinstance(align_steps, int) or align_steps < 0:
        raise ValueError(f"align_steps must be a whole number ≥ 0, got {align_steps!r}.")
    if output.exists():
        shutil.rmtree(output)
    _write_deem(DeemForConditionalGeneration.from_pretrained(study / "runs" / run / "stage2", dtype=torch.float32),
                output)
    for part in STAGE0_PARTS:
        shutil.copytree(study / "stage0" / part, output / "stage0" / part,
                        ignore=shutil.ignore_patterns("*.log", "samples.json"))
        _halve_safetensors(output / "stage0" / part)
    settings = {"study": json.loads((study / "results.json").read_text())["settings"], "run": run}
    (output / "stage0" / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    write_card(output, run, aligned=False)
    if align_steps:
        align_shipped(output, align_steps)  # rewrites the card
    sizes = {str(path.relative_to(output)): round(path.stat().st_size / 2**20, 2)
             for path in sorted(output.rglob("*.safetensors"))}
    sizes["total"] = round(sum(p.stat().st_size for p in output.rglob("*") if p.is_file()) / 2**20, 2)
    return sizes


def _write_deem(model: DeemForConditionalGeneration, output: Path) -> None:
    """The DEEM model into `output` as float16 safetensors whose config loads as float32, with the shipped
    folder's provenance and without load-time tokenizer keys or code copies."""
    model.to(torch.float16).save_pretrained(output)
    drop_code_copies(output)
    config = json.loads((output / "config.json").read_text())
    config["dtype"] = "float32"  # stored in float16, loaded as float32 (transformers casts on load)
    (output / "config.json").write_text(json.dumps(_shipped_provenance(config), indent=2) + "\n")
    tokenizer_config = json.loads((output / "tokenizer_config.json").read_text())
    for load_time_only in ("local_files_only", "is_local"):  # how it was loaded (HF_HUB_OFFLINE), not what it is
        tokenizer_config.pop(load_time_only, None)
    (output / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def align_shipped(output: str | Path, steps: int = ALIGNMENT["steps"], force: bool = False) -> dict[str, float]:
    """Condition alignment (`trainers.condition_alignment`) of a shipped deem-toy folder, in place: its NIP
    condition mapper learns to give the toy SD's text-encoder states for the world's training captions, so that
    its generations follow their captions. Starts from the weights as shipped (float16, loaded as float32), so
    aligning the shipped stage-II model again gives the same bits. Recorded in `stage0/settings.json`; a folder
    already aligned is refused unless `force` (aligning twice is not what ships)."""
    from transformers import TrainingArguments

    from trainers.condition_alignment import ConditionAlignmentTrainer, load_text_encoder

    from .datasets import captions

    output = Path(output)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number ≥ 1, got {steps!r}.")
    settings_path = output / "stage0" / "settings.json"
    settings = json.loads(settings_path.read_text()) if settings_path.exists() else {}
    if "condition_alignment" in settings and not force:
        raise ValueError(f"{str(output)!r} is already aligned ({settings_path} records it); pass force=True to align "
                         "it again.")
    model = DeemForConditionalGeneration.from_pretrained(output, dtype=torch.float32)
    text_encoder, text_tokenizer = load_text_encoder(output / "stage0" / "sd")
    recipe = {**ALIGNMENT, "steps": steps}
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            scratch, max_steps=steps, learning_rate=recipe["learning_rate"], weight_decay=0.0,
            per_device_train_batch_size=recipe["batch_size"], warmup_steps=max(1, steps // 20),
            lr_scheduler_type="cosine", seed=recipe["seed"], use_cpu=True, report_to="none", save_strategy="no",
            logging_steps=max(1, steps // 10), disable_tqdm=True)
        trainer = ConditionAlignmentTrainer(
            model, args, text_encoder=text_encoder, text_tokenizer=text_tokenizer,
            train_dataset=captions("train", recipe["num_captions"], seed=recipe["seed"]))
        metrics = trainer.train().metrics
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    _write_deem(model.eval(), output)
    settings["condition_alignment"] = {**recipe, "first_logged_loss": losses[0], "last_logged_loss": losses[-1],
                                       "seconds": round(metrics["train_runtime"], 1), "cpu": cpu_name(),
                                       "threads": torch.get_num_threads()}
    settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    write_card(output, settings.get("run", "unknown"), aligned=True)
    return settings["condition_alignment"]


def cpu_name() -> str:
    """The CPU's model name: CPU training is bit-for-bit repeatable on one kind of CPU, not across kinds (their
    kernels round differently and a run's trajectory drifts), so a record of how a part was made names it."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def write_card(output: Path, run: str, aligned: bool = True) -> None:
    """The folder's README: what the checkpoint is and how to load it (save_pretrained's generic card names this
    machine's paths and promises code copies that shipping removes)."""
    alignment = ("Its generation condition was then aligned to the toy SD's text encoder "
                 "(`trainers.condition_alignment`).\n" if aligned else "")
    (output / "README.md").write_text(f"""---
library_name: transformers
pipeline_tag: image-text-to-text
tags: [deem, toy]
---

# deem-toy

A small DEEM trained on the toy world of coloured shapes (run `{run}` of `python -m toyworld.study`, after stage
II), with the three stage-0 parts it was assembled from under `stage0/` (toy CLIP, toy Stable Diffusion, toy LM).
{alignment}Weights are stored as float16 and load as float32. What it has learned, and what it has not, is measured
in the DEEM-HF repository's `docs/TOY_WORLD.md`.

Load it with the DEEM-HF package installed (the classes come from the package, not from copies in this folder):

```python
from modeling_deem import DeemForConditionalGeneration

model = DeemForConditionalGeneration.from_pretrained("hub_configs/deem-toy")
processor = model.processor
```
""")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m toyworld.ship", description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--run", default="csr5-seed0")
    parser.add_argument("--output", required=True)
    parser.add_argument("--align-steps", type=int, default=ALIGNMENT["steps"],
                        help="Condition-alignment steps after shipping (0: ship the stage-II model as it is).")
    args = parser.parse_args(argv)
    sizes = ship(args.study, args.run, args.output, args.align_steps)
    print(json.dumps(sizes, indent=2))
    return sizes


if __name__ == "__main__":
    main()
