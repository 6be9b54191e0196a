"""Results on disk (per-sample JSON + summary), a Table-1-style text table and a bar chart of all runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from .benchmarks import BenchmarkResult

HEADLINE = {"robustvqa": "accuracy", "pope": "accuracy", "mmvp": "pair_accuracy", "vqav2": "accuracy",
            "caption": "cider", "mmvp-vlm": "mean", "winoground": "group"}


def run_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model.rstrip("/").split("/")[-1]) or "model"


def save_result(result: BenchmarkResult, results_dir: str | Path) -> Path:
    folder = Path(results_dir) / result.benchmark
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run_name(result.model)}.json"
    path.write_text(json.dumps({"summary": result.summary(), "records": result.records}, indent=2, default=str))
    return path


def load_summaries(results_dir: str | Path, benchmark: str) -> list[dict[str, Any]]:
    folder = Path(results_dir) / benchmark
    return [json.loads(p.read_text())["summary"] for p in sorted(folder.glob("*.json"))]


def table(summaries: list[dict[str, Any]]) -> str:
    """One row per model, one column per score (percentages, as the paper's tables)."""
    if not summaries:
        return "(no results)"
    columns = sorted({k for s in summaries for k in s["scores"]})
    header = ["model", *columns, "evaluated", "skipped"]
    rows = [[s["model"], *(f"{100 * s['scores'][c]:.2f}" if c in s["scores"] and c != "cider"
                           else f"{s['scores'].get(c, float('nan')):.3f}" for c in columns),
             str(s["evaluated"]), str(sum(s["skipped"].values()))] for s in summaries]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


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
        draw.text((left, height - margin + 6), name[:16], fill="black")
    path = Path(path)
    chart.save(path)
    return path
