"""Results on disk (per-sample JSON + summary), a Table-1-style text table and a bar chart of the runs on one data.

File naming (one file per model and data, tables per data) is `result_keys`'s rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from .benchmarks import BenchmarkResult
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
    return folder / result.data_key / f"{model_key(result.model)}.json"


def save_result(result: BenchmarkResult, results_dir: str | Path) -> Path:
    """Writes the summary, the per-sample records and where each skipped row was; replaces only this run's file."""
    path = result_path(result, results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {**result.summary(), "model_identity": model_identity(result.model)}
    path.write_text(json.dumps({"summary": summary, "records": result.records, "skipped_rows": result.skipped_rows},
                               indent=2, default=str))
    return path


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
    header = ["model", *columns, "evaluated", "skipped"]
    rows = [[s["model"], *(f"{100 * s['scores'][c]:.2f}" if c in s["scores"] and c != "cider"
                           else f"{s['scores'].get(c, float('nan')):.3f}" for c in columns),
             str(s["evaluated"]), skip_counts(s["skipped"])] for s in summaries]
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
