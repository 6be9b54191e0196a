"""P5 memory: what each training stage needs before any GPU is rented.

1. Static memory per stage (trainers.stages.STAGES; apply_stage sets what trains), from the model built on the meta
   device (no weights allocated, so deem-7b is counted on any machine): parameters, gradients and AdamW state, in
   bytes by dtype. Assumption (the primary table): `Trainer(bf16=True)` on a model loaded in fp32, i.e. autocast
   mixed precision: fp32 weights (the master weights are the weights), fp32 gradients for what trains, AdamW's
   exp_avg and exp_avg_sq in fp32 (its `step` counters are one fp32 scalar per tensor). A second total shows the
   bf16-weights scheme (DeepSpeed ZeRO / FSDP mixed precision: bf16 weights and gradients, an fp32 master copy
   plus fp32 AdamW state for what trains). Activations are not in these numbers (part 3 measures them).
2. Optimizer state exists only for parameters that get a gradient: one `DeemTrainer` step per stage on the tiny
   model; the parameters holding AdamW state must be exactly those whose `.grad` is set (and those that require
   grad).
3. Peak memory of a stage-I forward+backward with activation checkpointing off vs on, at the bench config, each
   in fresh subprocesses: glibc is told to serve every allocation ≥ 64 KiB with mmap (MALLOC_MMAP_THRESHOLD_), so
   freed tensors leave the resident set; after a warm-up step and `malloc_trim`, the kernel's peak-RSS mark is
   reset (/proc/self/clear_refs 5) and the step's peak RSS over the baseline (weights, gradients, batch) is read
   from VmHWM. That delta is activation memory plus the step's temporaries.

    python -m benchmarks.memory hub_configs/deem-7b [--activation-config hub_configs/deem-bench] [--repeats 3]
    python -m benchmarks.memory hub_configs/deem-tiny --quick        # CI smoke
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import (
    BATCH_ROWS,
    ROOT,
    SAMPLE_IMAGES,
    build_model,
    command_line,
    config_path,
    cpu_seconds,
    document_row,
    load_config,
    machine,
    medians,
    print_table,
    ratio_stats,
    run_interleaved,
    setup_threads,
    training_batch,
    write_json,
)
from modeling_deem import DeemConfig, DeemForConditionalGeneration
from trainers.stages import STAGES, apply_stage, parameter_group

GIB = 1024**3


# ------------------------------------------------------------------------------------------- 1. static memory
def _meta_model(config: DeemConfig, stage: str, lora_r: int | None = None) -> torch.nn.Module:
    recipe = STAGES[stage]
    config = DeemConfig.from_dict(config.to_dict())
    if not recipe.with_image_decoder:
        config.with_image_decoder = False
    with torch.device("meta"):
        model = DeemForConditionalGeneration(config)
        if lora_r:
            from trainers.lora import lora_on_language_model

            model = lora_on_language_model(model, stage, r=lora_r, alpha=2 * lora_r)
    apply_stage(model, stage)
    return model


def stage_memory(config: DeemConfig, stage: str, lora_r: int | None = None) -> dict[str, Any]:
    """Parameter / gradient / AdamW bytes of one stage, by dtype, under both precision schemes."""
    model = _meta_model(config, stage, lora_r)
    total = trainable = 0
    by_dtype: dict[str, int] = defaultdict(int)
    groups: dict[str, int] = defaultdict(int)
    tensors = 0
    for name, parameter in model.named_parameters():
        total += parameter.numel()
        by_dtype[str(parameter.dtype).removeprefix("torch.")] += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
            tensors += 1
            group = "lora" if "lora_" in name else parameter_group(name)
            groups[group] += parameter.numel()
    frozen = total - trainable
    amp = {  # Trainer(bf16=True) on an fp32 model: autocast, everything stored in fp32
        "parameters": {"float32": 4 * total},
        "gradients": {"float32": 4 * trainable},
        "adamw_state": {"float32": 8 * trainable + 4 * tensors},
    }
    amp["total"] = sum(sum(part.values()) for part in amp.values())
    bf16 = {  # bf16 weights and gradients; fp32 master copy + fp32 AdamW state for what trains
        "parameters": {"bfloat16": 2 * total},
        "gradients": {"bfloat16": 2 * trainable},
        "adamw_state": {"float32": 12 * trainable + 4 * tensors},
    }
    bf16["total"] = sum(sum(part.values()) for part in bf16.values())
    return {"stage": stage if not lora_r else f"{stage} + LoRA r={lora_r}", "parameters": total,
            "trainable": trainable, "frozen": frozen, "stored_dtypes": dict(by_dtype),
            "trainable_by_group": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
            "with_image_decoder": STAGES[stage].with_image_decoder, "amp_fp32": amp, "bf16_master": bf16}


def print_static(rows: list[dict[str, Any]], label: str) -> None:
    table = []
    for row in rows:
        amp = row["amp_fp32"]
        table.append([row["stage"], row["parameters"] / 1e6, row["trainable"] / 1e6,
                      amp["parameters"]["float32"] / GIB, amp["gradients"]["float32"] / GIB,
                      amp["adamw_state"]["float32"] / GIB, amp["total"] / GIB, row["bf16_master"]["total"] / GIB])
    print_table(["stage", "params M", "trained M", "weights fp32 GiB", "grads fp32 GiB", "AdamW fp32 GiB",
                 "total GiB", "bf16+master GiB"], table,
                f"Static training memory of {label} per stage (no activations; Trainer bf16=True on an fp32 model = "
                "autocast: fp32 weights, fp32 grads, fp32 AdamW m and v; last column: bf16 weights/grads + fp32 "
                "master and AdamW for what trains)")
    for row in rows:
        parts = ", ".join(f"{group} {count / 1e6:.2f}M" for group, count in row["trainable_by_group"].items())
        print(f"  {row['stage']}: trains {parts}")


# ------------------------------------------------------------------------------- 2. optimizer state check
def optimizer_state_check(stage: str, workdir: Path) -> dict[str, Any]:
    """One DeemTrainer step on the tiny model: names with AdamW state vs names with a gradient vs trainable."""
    from transformers import TrainerCallback

    from processing import DeemProcessor
    from trainers import DeemDataCollator, DeemTrainer, make_shapes_dataset

    recipe = STAGES[stage]
    config = load_config("tiny")
    if not recipe.with_image_decoder:
        config.with_image_decoder = False
    model = build_model(config)
    processor = DeemProcessor.from_pretrained(config_path("tiny"))
    seen: dict[str, set[str]] = {}

    class Capture(TrainerCallback):
        def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
            names = {id(p): n for n, p in model.named_parameters()}
            seen["grad"] = {n for n, p in model.named_parameters() if p.grad is not None}
            seen["requires_grad"] = {n for n, p in model.named_parameters() if p.requires_grad}
            seen["state"] = {names[id(p)] for p, s in optimizer.state.items() if s}
            seen["in_optimizer"] = {names[id(p)] for g in optimizer.param_groups for p in g["params"]}

    args = recipe.training_arguments(str(workdir / stage), max_steps=1, warmup_steps=0, per_device_train_batch_size=4,
                                     logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0,
                                     disable_tqdm=True)
    trainer = DeemTrainer(model=model, args=args, stage=stage, train_dataset=make_shapes_dataset(num_rows=8, seed=0),
                          data_collator=DeemDataCollator(processor, decoder_views=config.with_image_decoder),
                          callbacks=[Capture()])
    trainer.train()
    state, grad, trainable = seen["state"], seen["grad"], seen["requires_grad"]
    return {"stage": stage, "parameters": len(list(model.parameters())), "with_state": len(state),
            "with_grad": len(grad), "requires_grad": len(trainable), "in_optimizer": len(seen["in_optimizer"]),
            "state_without_grad": sorted(state - grad), "grad_without_state": sorted(grad - state),
            "trainable_without_grad": sorted(trainable - grad), "ok": state == grad == trainable}


# ------------------------------------------------------------------------------- 3. activation checkpointing
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _release_freed_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def saved_for_backward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """Bytes of the tensors autograd keeps for backward after one forward (unique storages), by the top-level part
    that saved them ("DeemForConditionalGeneration" = the model's own code between its parts). Inside a
    non-reentrant checkpointed region autograd saves nothing of its own (checkpoint's hooks hold placeholders), so
    with checkpointing on this is what stays outside checkpointed regions (and the regions' inputs are not in it)."""
    stack = ["DeemForConditionalGeneration"]
    handles = []
    parts = dict(model.named_children())
    if "language_model" in parts:
        parts["language_model"] = model.language_model.get_decoder()  # forward calls the decoder directly
    hooked = list(parts.items())
    if "decoder_mmfs" in parts:  # its blocks run inside the UNet (as skip residuals), not through its forward
        from modeling_deem.mmfs_unet import DecoderMMFSBlock

        hooked += [("decoder_mmfs", m) for m in parts["decoder_mmfs"].modules() if isinstance(m, DecoderMMFSBlock)]
    for name, module in hooked:
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: stack.append(name)))
        handles.append(module.register_forward_hook(lambda m, a, o: stack.pop() and None))  # None: output kept
    seen: set[int] = set()
    by_part: dict[str, int] = defaultdict(int)

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            by_part[stack[-1]] += storage.nbytes()
        return tensor

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            output = model(**batch)
        del output
    finally:
        for handle in handles:
            handle.remove()
    return dict(sorted(by_part.items(), key=lambda kv: -kv[1]))


def child(config_name: str, checkpointing: bool, rows: int, images: int) -> dict[str, Any]:
    """In a fresh process: peak RSS of one stage-I forward+backward over the baseline, and its CPU time."""
    config = load_config(config_name)
    model = build_model(config, "stage1")
    if checkpointing:
        model.activation_checkpointing_enable()
    batch = training_batch(config, [document_row(config, images)] * rows)

    def step() -> None:
        model(**batch).loss.backward()

    torch.manual_seed(0)
    step()  # warm-up: lazily built state, gradient buffers
    model.zero_grad(set_to_none=False)  # gradient buffers stay allocated: part of the baseline, not activations
    _release_freed_memory()
    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    torch.manual_seed(0)
    seconds, _ = cpu_seconds(step)
    peak = _status_kib("VmHWM")
    model.zero_grad(set_to_none=False)
    torch.manual_seed(0)
    saved = saved_for_backward(model, batch)
    return {"checkpointing": checkpointing, "baseline_mib": baseline / 1024, "peak_mib": peak / 1024,
            "activation_mib": (peak - baseline) / 1024, "step_cpu_s": seconds,
            "saved_mib": sum(saved.values()) / 2**20, "saved_mib_by_part": {k: v / 2**20 for k, v in saved.items()}}


def activation_memory(config_name: str, repeats: int, rows: int, images: int, threads: int) -> dict[str, Any]:
    """Fresh subprocesses, off/on alternated (on/off next repeat); medians."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0",
           "OMP_NUM_THREADS": str(threads)}
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for index in range(repeats):
        for mode in (("off", "on") if index % 2 == 0 else ("on", "off")):
            command = [sys.executable, "-m", "benchmarks.memory", str(config_name), "--child", mode,
                       "--rows", str(rows), "--images", str(images), "--threads", str(threads)]
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    summary = {mode: {key: statistics.median(run[key] for run in values)
                      for key in ("baseline_mib", "peak_mib", "activation_mib", "step_cpu_s", "saved_mib")}
               for mode, values in runs.items()}
    off, on = summary["off"]["activation_mib"], summary["on"]["activation_mib"]
    return {"config": str(config_name), "rows": rows, "images_per_row": images, "repeats": repeats, "runs": runs,
            "median": summary, "saving": 1 - on / off if off > 0 else None,
            "saved_saving": 1 - summary["on"]["saved_mib"] / summary["off"]["saved_mib"],
            "saved_mib_by_part": {mode: values[0]["saved_mib_by_part"] for mode, values in runs.items()},
            "timing": checkpointing_time(config_name, rows, images, 1 if repeats == 1 else 5)}


def checkpointing_time(config_name: str, rows: int, images: int, pairs: int) -> dict[str, Any]:
    """CPU time of stage-I steps (forward, backward, AdamW) with checkpointing off/on, interleaved in this process
    (normal allocator: the subprocesses' mmap-per-allocation setting makes their times unrepresentative)."""
    config = load_config(config_name)
    batch = training_batch(config, [document_row(config, images)] * rows)
    arms = {}
    for mode in ("off", "on"):
        model = build_model(config, "stage1")  # the same seed: the same weights
        if mode == "on":
            model.activation_checkpointing_enable()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(model: torch.nn.Module = model, optimizer: torch.optim.Optimizer = optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            optimizer.step()

        arms[mode] = step
    times = run_interleaved(arms, pairs)
    return {"pairs": pairs, "median_step_s": medians(times), "ratio": ratio_stats(times["on"], times["off"]),
            "step_s": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="hub_configs/deem-7b", help="config folder for the static table")
    parser.add_argument("--activation-config", default="hub_configs/deem-bench")
    parser.add_argument("--rows", type=int, default=BATCH_ROWS)
    parser.add_argument("--images", type=int, default=SAMPLE_IMAGES)
    parser.add_argument("--repeats", type=int, default=3, help="fresh subprocesses per checkpointing mode")
    parser.add_argument("--lora-r", type=int, default=16, help="also count stage 2 with LoRA of this rank (0: no)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny activation config, 1 repeat, stage-I check only")
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--output", default="outputs/benchmarks/memory.json")
    args = parser.parse_args()
    setup_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.config, args.child == "on", args.rows, args.images)))
        return

    config = DeemConfig.from_pretrained(config_path(args.config))
    static = [stage_memory(config, stage) for stage in STAGES]
    if args.lora_r:
        static.insert(2, stage_memory(config, "stage2", lora_r=args.lora_r))
    print_static(static, str(args.config))

    print()
    checks = []
    with tempfile.TemporaryDirectory() as workdir:
        for stage in (["stage1"] if args.quick else list(STAGES)):
            checks.append(optimizer_state_check(stage, Path(workdir)))
    print_table(["stage (tiny, 1 DeemTrainer step)", "params", "requires grad", "with .grad", "with AdamW state",
                 "state == grad == trainable"],
                [[c["stage"], c["parameters"], c["requires_grad"], c["with_grad"], c["with_state"],
                  "yes" if c["ok"] else "NO"] for c in checks])
    for check in checks:
        for key in ("state_without_grad", "grad_without_state", "trainable_without_grad"):
            if check[key]:
                print(f"  {check['stage']} {key}: {check[key][:6]}")

    print()
    activation_config = "hub_configs/deem-tiny" if args.quick else args.activation_config
    activations = activation_memory(activation_config, 1 if args.quick else args.repeats, args.rows, args.images,
                                    args.threads)
    med = activations["median"]
    timing = activations["timing"]
    print_table(["stage-I step, " + activation_config, "baseline MiB", "peak MiB", "peak − baseline MiB",
                 "saved for backward MiB", "step CPU s"],
                [[f"checkpointing {mode}", med[mode]["baseline_mib"], med[mode]["peak_mib"],
                  med[mode]["activation_mib"], med[mode]["saved_mib"], timing["median_step_s"][mode]]
                 for mode in ("off", "on")])
    saving = activations["saving"]
    print(f"activation memory with checkpointing: peak {saving:.1%} less, saved-for-backward "
          f"{activations['saved_saving']:.1%} less (target ≥ 30%: {'met' if saving >= 0.3 else 'MISSED'}); step "
          f"time ×{timing['ratio']['median']:.2f} (min ×{timing['ratio']['min']:.2f}, {timing['pairs']} interleaved "
          f"pairs); {args.rows} rows × {args.images} images, median of {activations['repeats']} fresh processes each")
    left = activations["saved_mib_by_part"]["on"]
    print("  still saved with checkpointing on (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in list(left.items())[:6]))
    write_json(args.output, {"command": command_line(), "machine": machine(args.threads), "static": static,
                             "static_config": str(args.config), "optimizer_state_checks": checks,
                             "activation_checkpointing": activations})


if __name__ == "__main__":
    main()
