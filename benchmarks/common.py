"""What the benchmark scripts share: configs by name, token rows in DEEM's layout, interleaved A/B timing in CPU
time, ratio statistics, the machine's description, and the table/JSON output.

House rules (README "Benchmarks"): every arm runs in the same process, interleaved, with the order of the arms
rotated and reversed from round to round, after a warm-up, at a fixed thread count; a time is this process's CPU
time (`time.process_time`), so other processes' load on a shared machine matters less than for wall time; results
are the median and the minimum of the per-round ratios.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread everywhere, so CPU time is comparable

import torch  # noqa: E402

from modeling_deem import DeemConfig, DeemForConditionalGeneration  # noqa: E402

CONFIGS = {name: ROOT / "hub_configs" / f"deem-{name}" for name in ("tiny", "bench", "7b")}
TEXT_START = 10  # the first ordinary token id used for filler text (below it: specials of the tiny tokenizer)
# The stage-I training sample every benchmark uses (`document_row(config, SAMPLE_IMAGES)`): <s>, 20 text tokens, an
# image, 20, an image, 20, </s> = 218 tokens, 2 images, each with text before it → 2 NIP + 2 CSR UNet samples;
# BATCH_ROWS of them per training step (the paper's stage I: 4 per GPU).
SAMPLE_IMAGES = 2
BATCH_ROWS = 3


def config_path(name: str) -> Path:
    """`tiny`, `bench`, `7b` or a folder (e.g. `hub_configs/deem-bench`)."""
    return CONFIGS.get(name.removeprefix("deem-"), Path(name))


def load_config(name: str, **overrides: Any) -> DeemConfig:
    config = DeemConfig.from_pretrained(config_path(name))
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def config_label(name: str) -> str:
    return f"deem-{name.removeprefix('deem-')}" if name.removeprefix("deem-") in CONFIGS else str(name)


def build_model(config: DeemConfig, stage: str | None = None, seed: int = 0) -> DeemForConditionalGeneration:
    """A randomly initialised DEEM (seeded); with `stage`, in train mode with the stage's frozen parts and losses."""
    from trainers.stages import apply_stage

    torch.manual_seed(seed)
    model = DeemForConditionalGeneration(config)
    if stage is None:
        return model.eval()
    model.train()
    apply_stage(model, stage)
    return model


def text_ids(config: DeemConfig, count: int, offset: int = 0) -> list[int]:
    """`count` ordinary token ids (cycling through the vocabulary above the special tokens)."""
    vocab = min(config.text_config.vocab_size, 500)
    span = vocab - TEXT_START
    return [TEXT_START + (offset + i) % span for i in range(count)]


def image_slot(config: DeemConfig) -> list[int]:
    return [config.image_start_token_id] + [config.image_token_id] * config.num_image_tokens


def document_row(config: DeemConfig, images: int, text: int = 20, tail: int | None = None) -> list[int]:
    """`<s>` (text, image) × images, text, `</s>`: every image has text before it, so each gets NIP and CSR."""
    row = [config.bos_token_id]
    for index in range(images):
        row += text_ids(config, text, offset=index * text) + image_slot(config)
    row += text_ids(config, text if tail is None else tail, offset=images * text)
    return row + [config.eos_token_id]


def training_batch(config: DeemConfig, rows: list[list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Equal-length rows → input_ids, attention_mask, labels and random encoder/decoder views of their images."""
    if len({len(row) for row in rows}) != 1:
        raise ValueError("training_batch takes rows of one length")
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.tensor(rows)
    images = int((input_ids == config.image_token_id).sum()) // config.num_image_tokens
    size, decoder = config.vision_config.image_size, config.decoder_image_size
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": input_ids.clone(),
        "pixel_values": torch.randn(images, 3, size, size, generator=generator),
        "decoder_pixel_values": torch.rand(images, 3, decoder, decoder, generator=generator) * 2 - 1,
    }


def cpu_seconds(function: Callable[[], Any]) -> tuple[float, Any]:
    """CPU time of this process (all its threads) while `function` runs, and its result."""
    start = time.process_time()
    result = function()
    return time.process_time() - start, result


def run_interleaved(arms: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1,
                    seed_each: bool = True) -> dict[str, list[float]]:
    """CPU seconds of each arm per round. Every round runs every arm once; the order is rotated by one each round
    and reversed every other round (two arms: A B, B A, A B, ...). `seed_each` seeds torch's RNG with the round
    number before each arm, so the arms draw the same noise."""
    names = list(arms)
    for _ in range(warmup):
        for name in names:
            arms[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = (index // 2) % len(names)
        order = names[shift:] + names[:shift]
        if index % 2:
            order = order[::-1]
        for name in order:
            if seed_each:
                torch.manual_seed(index)
            seconds, _ = cpu_seconds(arms[name])
            times[name].append(seconds)
    return times


def ratio_stats(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """Median and minimum of the per-round ratios numerator / denominator."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in times.items()}


def machine(threads: int) -> dict[str, Any]:
    """The CPU and the settings a number was taken with."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "logical_cpus": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "time": "CPU time of the process (time.process_time)"}


def setup_threads(threads: int) -> None:
    """A fixed intra-op thread count, and one inter-op thread (settable once per process)."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran
        pass


def command_line() -> str:
    """The command that produced a result, as the user would type it."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    program = f"python -m {spec.name}" if spec is not None and spec.name else f"python {sys.argv[0]}"
    return " ".join([program, *sys.argv[1:]])


def write_json(path: str | Path, result: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def print_table(headers: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    """A plain aligned table (numbers right-aligned)."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) if cells else len(str(h))
              for i, h in enumerate(headers)]
    if title:
        print(title)
    print("  ".join(str(h).ljust(w) if i == 0 else str(h).rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.1f}"
        if abs(value) >= 1:
            return f"{value:.3f}"
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,d}"
    return str(value)


def count_flops(function: Callable[[], Any]) -> int:
    """FLOPs of one call of `function` (forward and, if it runs one, backward) by torch's FlopCounterMode, with
    attention in SDPA's math form: the counter has no formula for the CPU flash-attention kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


@contextlib.contextmanager
def quiet_stderr():
    """Silence the C-level stderr (the profiler's kineto start/stop lines) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def profile_ops(function: Callable[[], Any], repeats: int = 3) -> dict[str, Any]:
    """torch.profiler over `repeats` calls of `function` (after one unprofiled call), per call: wall time, the ops'
    summed self time, the number of op calls, and each op's calls and self ms (the profiler's times are wall
    times and include its own per-op overhead). Time not in any op's self time is Python and dispatch."""
    from torch.profiler import ProfilerActivity, profile

    function()
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        wall = (time.perf_counter() - start) / repeats
    by_op = {e.key: {"calls": e.count / repeats, "self_ms": e.self_cpu_time_total / 1e3 / repeats}
             for e in prof.key_averages()}
    ops_ms = sum(v["self_ms"] for v in by_op.values())
    return {"wall_ms": 1e3 * wall, "ops_ms": ops_ms, "op_calls": sum(v["calls"] for v in by_op.values()),
            "by_op": by_op}


def op_gap(slow: Callable[[], Any], fast: Callable[[], Any], limit: int = 10) -> dict[str, Any]:
    """Where `slow` spends more than `fast`: per-op self CPU ms and call differences (profiled, per call), and the
    CPU time outside ops (Python, dispatch) of each."""
    a, b = profile_ops(slow), profile_ops(fast)
    keys = set(a["by_op"]) | set(b["by_op"])
    zero = {"calls": 0.0, "self_ms": 0.0}
    rows = [{"op": key, "extra_ms": a["by_op"].get(key, zero)["self_ms"] - b["by_op"].get(key, zero)["self_ms"],
             "extra_calls": a["by_op"].get(key, zero)["calls"] - b["by_op"].get(key, zero)["calls"]} for key in keys]
    rows.sort(key=lambda r: -r["extra_ms"])
    return {"slow": {k: a[k] for k in ("wall_ms", "ops_ms", "op_calls")},
            "fast": {k: b[k] for k in ("wall_ms", "ops_ms", "op_calls")},
            "outside_ops_ms": {"slow": a["wall_ms"] - a["ops_ms"], "fast": b["wall_ms"] - b["ops_ms"]},
            "top_extra_ops": rows[:limit]}


def print_op_gap(title: str, gap: dict[str, Any]) -> None:
    slow, fast = gap["slow"], gap["fast"]
    print(f"{title}: profiled {slow['wall_ms']:.1f} vs {fast['wall_ms']:.1f} ms per call (wall, with the "
          f"profiler's overhead); in ops "
          f"{slow['ops_ms']:.1f} vs {fast['ops_ms']:.1f} ms ({slow['op_calls']:.0f} vs {fast['op_calls']:.0f} op "
          f"calls); outside ops (Python, dispatch) {gap['outside_ops_ms']['slow']:.1f} vs "
          f"{gap['outside_ops_ms']['fast']:.1f} ms")
    print_table(["op", "extra self CPU ms", "extra calls"],
                [[r["op"][:48], r["extra_ms"], r["extra_calls"]] for r in gap["top_extra_ops"]])
