"""Results on disk (per-sample JSON + summary + how the run was made), a Table-1-style text table and a bar chart
of the runs on one data.

File naming (one file per model and data, tables per data) is `result_keys`'s rule."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from .benchmarks import BenchmarkResult
from .metrics import score_text
from .result_keys import model_identity, model_key, readable

HEADLINE = {"robustvqa": "accuracy", "pope": "accuracy", "mmvp": "pair_accuracy", "vqav2": "accuracy",
            "caption": "cider", "mmvp-vlm": "mean", "winoground": "group"}


def run_name(model: str) -> str:
    """The file name of a run without a data key (the matching commands): the model name's last path part."""
    return readable(model)


def result_path(result: BenchmarkResult, results_dir: str | Path) -> Path:
    """Where a run's file lives; with a data key, the rule of `result_keys` (one file per model and data)."""
    folder = Path(results_dir) / result.benchmark
    if result.data_key is None:
        return folder / f"{run_name(result.model)}.json"
    suffix = f"-{result.prompt}" if result.prompt else ""  # a paper-prompt run never overwrites a generic one
    return folder / result.data_key / f"{model_key(result.model)}{suffix}.json"


def save_result(result: BenchmarkResult, results_dir: str | Path, run: dict[str, Any] | None = None) -> Path:
    """Writes the summary (with `run`, see `run_metadata`), the per-sample records and where each skipped row was;
    replaces only this run's file."""
    path = result_path(result, results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {**result.summary(), "model_identity": model_identity(result.model)}
    if run is not None:
        summary["run"] = run
    path.write_text(json.dumps({"summary": summary, "records": result.records, "skipped_rows": result.skipped_rows},
                               indent=2, default=str))
    return path


def run_metadata(model: str | Path, decoding: dict[str, Any], prompt: str | None = None) -> dict[str, Any]:
    """What a rerun needs to reproduce the numbers: decoding settings, prompt name, model revision, versions."""
    return {"decoding": decoding, "prompt": prompt, "model_revision": model_revision(model),
            "versions": {**{name: _version(name) for name in ("deem-hf", "transformers", "torch")},
                         "python": platform.python_version()}}


def decoding_settings(answerer: Any, **known: Any) -> dict[str, Any]:
    """The answerer's own account of its decoding (a dict, or a method returning one, named `decoding`,
    `decoding_settings` or `generation_settings`) over what the command knows."""
    for name in ("decoding", "decoding_settings", "generation_settings"):
        value = getattr(answerer, name, None)
        value = value() if callable(value) else value
        if isinstance(value, dict):
            return {**known, **value}
    return known


def model_revision(model: str | Path) -> dict[str, Any]:
    """A local folder: sha256 over config.json's bytes and the weight files' names and sizes (reading the weights
    would take minutes), plus the commit when the folder is a hub cache snapshot or a git checkout. A hub id: the
    commit its cached `main` resolves to, found offline (None when not cached)."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return {"hub_id": str(model), "commit": _cached_commit(str(model))}
    digest = hashlib.sha256((path / "config.json").read_bytes() if (path / "config.json").is_file() else b"")
    weights = {f.name: f.stat().st_size for f in sorted(path.iterdir()) if f.is_file() and (
        f.suffix in (".safetensors", ".bin", ".pt", ".pth") or f.name.endswith(".index.json"))}
    for name, size in weights.items():
        digest.update(f"\0{name}\0{size}".encode())
    commit = path.resolve().name if path.resolve().parent.name == "snapshots" else _git_commit(path)
    return {"folder": str(path.resolve()), "content_sha256": digest.hexdigest(), "weight_files": weights,
            "commit": commit}


def _cached_commit(repo_id: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a valid repo id, or no hub library: nothing to resolve
        return None
    return Path(found).parent.name if isinstance(found, str) else None


def _git_commit(path: Path) -> str | None:
    if not (path / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def results_folder(results_dir: str | Path, benchmark: str, data_key: str | None = None) -> Path:
    """The folder holding the runs of one benchmark on one data key (the chart goes there too)."""
    folder = Path(results_dir) / benchmark
    return folder if data_key is None else folder / data_key


def load_summaries(results_dir: str | Path, benchmark: str, data_key: str | None = None) -> list[dict[str, Any]]:
    """The summaries of the runs on one data key only, so runs on other data never join the table."""
    return [json.loads(p.read_text())["summary"]
            for p in sorted(results_folder(results_dir, benchmark, data_key).glob("*.json"))]


def table(summaries: list[dict[str, Any]]) -> str:
    """One row per model, one column per score (percentages, as the paper's tables)."""
    if not summaries:
        return "(no results)"
    columns = sorted({k for s in summaries for k in s["scores"]})
    header = ["model", "prompt", *columns, "evaluated", "skipped"]
    rows = [[s["model"], str(s.get("prompt") or "-"),
             *(score_text(c, s["scores"][c]) if c in s["scores"] else "nan" for c in columns),
             str(s["evaluated"]), skip_counts(s["skipped"])] for s in summaries]
    text = aligned_table(header, rows)
    if any("conventions" in s for s in summaries):
        text += "\n\n" + conventions_table(summaries)
    return text


def conventions_table(summaries: list[dict[str, Any]]) -> str:
    """POPE under each convention (overall and per split), so a published number can be compared with the same
    reading of the answers; `unknown` counts answers the convention reads as neither yes nor no (scored wrong)."""
    metrics = ["accuracy", "precision", "recall", "f1", "yes_ratio"]
    header = ["model", "convention", "split", *metrics, "unknown"]
    rows = []
    for s in summaries:
        for name, convention in s.get("conventions", {}).items():
            for split, values in convention.items():
                if isinstance(values, dict):
                    rows.append([s["model"], name, split, *(f"{100 * values[m]:.2f}" for m in metrics),
                                 f"{values['unknown']} ({100 * values['unknown_ratio']:.1f}%)"])
    headline = next((s["headline"] for s in summaries if "headline" in s), {})
    title = (f"Headline: {headline.get('convention')} (the columns above). "
             "The same answers under each convention (rules and sources in the results JSON):")
    return title + "\n" + aligned_table(header, rows)


def aligned_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: columns padded to their widest cell, " | " between them, a rule under the header."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def skip_counts(skipped: dict[str, int]) -> str:
    """"0", or the total and the count per reason: "3 (image file missing: 2, pair partner skipped: 1)"."""
    if not skipped:
        return "0"
    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items()))
    return f"{sum(skipped.values())} ({reasons})"


def bar_chart(summaries: list[dict[str, Any]], benchmark: str, path: str | Path) -> Path:
    """Bars of the headline score of each run (drawn with PIL: no plotting dependency)."""
    metric = HEADLINE.get(benchmark, "accuracy")
    values = [(s["model"], float(s["scores"].get(metric, 0.0))) for s in summaries]
    top = max([v for _, v in values] + [1e-9])
    width, height, margin = 120 + 110 * len(values), 320, 40
    chart = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(chart)
    draw.text((10, 8), f"{benchmark}: {metric}", fill="black")
    draw.line([(margin, height - margin), (width - 10, height - margin)], fill="black")
    palette = [(70, 110, 200), (220, 120, 50), (80, 170, 90), (190, 70, 90), (130, 100, 180)]
    for index, (name, value) in enumerate(values):
        left = margin + 20 + index * 110
        bar_height = int((height - 2 * margin - 20) * value / top)
        draw.rectangle([left, height - margin - bar_height, left + 70, height - margin], fill=palette[index % 5])
        draw.text((left, height - margin - bar_height - 14), f"{value:.3f}", fill="black")
        draw.text((left, height - margin + 6), name[-16:], fill="black")  # a path's end tells runs apart
    path = Path(path)
    chart.save(path)
    return path
