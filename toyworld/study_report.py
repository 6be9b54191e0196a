"""The CSR study's report: mean ± std over seeds per λ_CSR and stage, a plot with the spread, and a verdict
computed from the numbers (a difference counts only where it exceeds twice its standard error).

    python -m toyworld.study_report outputs/toy-study [docs]  # TOY_STUDY.md and toy_study.png there (+ docs/)
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

# (label, benchmark, score key, higher is better)
METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("RobustVQA-toy acc", "robustvqa", "accuracy", True),
    ("RobustVQA-toy R", "robustvqa", "accuracy_R", True),
    ("RobustVQA-toy A", "robustvqa", "accuracy_A", True),
    ("RobustVQA-toy V", "robustvqa", "accuracy_V", True),
    ("POPE-toy acc", "pope", "accuracy", True),
    ("POPE-toy F1", "pope", "f1", True),
    ("POPE-toy adversarial F1", "pope", "adversarial_f1", True),
    ("POPE-toy yes-ratio", "pope", "yes_ratio", None),
    ("VQA-toy acc (in-distribution)", "vqav2", "accuracy", True),
    ("CSR reconstruction MSE", "reconstruction_mse", "", False),
)
PLOTTED = ("RobustVQA-toy acc", "POPE-toy acc", "VQA-toy acc (in-distribution)")
PALETTE = ((150, 150, 150), (70, 110, 200), (220, 120, 50), (80, 170, 90))  # one colour per λ
MSE_LABEL = next(label for label, benchmark, _, _ in METRICS if benchmark == "reconstruction_mse")
BAR, GAP = 26, 34  # a bar's and a group's gap's width in pixels


def _value(scores: dict[str, Any], benchmark: str, key: str) -> float | None:
    value = scores.get(benchmark)
    if isinstance(value, dict):
        value = value.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def aggregate(results: dict[str, Any]) -> dict[tuple[float, str, str], list[float]]:
    """(λ, stage, metric label) → the values over seeds."""
    table: dict[tuple[float, str, str], list[float]] = {}
    for run in results["runs"].values():
        for stage, scores in run["scores"].items():
            for label, benchmark, key, _ in METRICS:
                value = _value(scores, benchmark, key)
                if value is not None:
                    table.setdefault((run["csr_loss_weight"], stage, label), []).append(value)
    return table


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def verdict(table: dict[tuple[float, str, str], list[float]], off: float, on: float) -> list[str]:
    """One sentence per (stage, metric): the difference CSR on − off and whether it exceeds 2 standard errors."""
    lines = []
    for stage in ("stage1", "stage2"):
        for label, _, _, higher in METRICS:
            a, b = table.get((off, stage, label)), table.get((on, stage, label))
            if not a or not b or higher is None:
                continue
            (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
            diff = mb - ma
            if len(a) < 2 or len(b) < 2:  # one seed has no spread: nothing to weigh the difference against
                lines.append(f"{stage}, {label}: one seed, no spread to judge by ({mb:.3f} vs {ma:.3f}, difference "
                             f"{diff:+.3f}).")
                continue
            se = (sa ** 2 / len(a) + sb ** 2 / len(b)) ** 0.5
            if abs(diff) > 2 * se and diff != 0:
                word = "better" if (diff > 0) == higher else "worse"
                lines.append(f"{stage}, {label}: CSR on is {word} ({mb:.3f} vs {ma:.3f}, difference {diff:+.3f}, "
                             f"2 SE = {2 * se:.3f}).")
            else:
                lines.append(f"{stage}, {label}: no difference beyond the seeds' spread ({mb:.3f} vs {ma:.3f}, "
                             f"difference {diff:+.3f}, 2 SE = {2 * se:.3f}).")
    return lines


def _panel(draw: ImageDraw.ImageDraw, table: dict[tuple[float, str, str], list[float]], lambdas: list[float],
           labels: tuple[str, ...], scale: float, left: int) -> int:
    """Grouped bars for `labels` × stages on an axis from 0 to `scale`, starting at x = `left`; returns the x after."""
    bar, gap, bottom, top = BAR, GAP, 300, 40
    groups = [(stage, label) for stage in ("stage1", "stage2") for label in labels]
    right = left + _panel_width(len(labels), len(lambdas))
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = bottom - fraction * (bottom - top)
        draw.line([(left + 30, y), (right - 10, y)], fill=(225, 225, 225))
        draw.text((left - 2, y - 6), f"{fraction * scale:.2f}" if scale >= 0.1 else f"{fraction * scale:.3f}",
                  fill="black")

    def to_y(value: float) -> float:
        return bottom - min(max(value / scale, 0.0), 1.0) * (bottom - top)

    x = left + 40
    for stage, label in groups:
        for index, lam in enumerate(lambdas):
            values = table.get((lam, stage, label), [])
            if values:
                mean, std = mean_std(values)
                draw.rectangle([x, to_y(mean), x + bar - 4, bottom], fill=PALETTE[index % len(PALETTE)])
                centre = x + (bar - 4) / 2
                draw.line([(centre, to_y(mean - std)), (centre, to_y(mean + std))], fill="black", width=2)
                for v in values:
                    draw.ellipse([centre - 2, to_y(v) - 2, centre + 2, to_y(v) + 2], outline="black")
            x += bar
        draw.text((x - len(lambdas) * bar, bottom + 6), stage.replace("stage", "st. "), fill="black")
        short = "recon. MSE" if label == MSE_LABEL else label.split(" (")[0].replace("-toy", "")[:16]
        draw.text((x - len(lambdas) * bar, bottom + 20), short, fill="black")
        x += gap
    return right


def _panel_width(num_labels: int, num_lambdas: int) -> int:
    """What `_panel` draws across: an axis margin, then a group of bars per label and stage."""
    return 20 + 2 * num_labels * (num_lambdas * BAR + GAP)


def plot(table: dict[tuple[float, str, str], list[float]], lambdas: list[float], path: Path) -> Path:
    """Grouped bars (one group per stage × metric, one bar per λ) with ±1 std whiskers and the seeds' dots: the
    accuracies on a 0-1 axis, and beside them, on its own axis, the CSR path's reconstruction MSE (lower is better),
    the one metric the study's verdict found CSR to move."""
    mse_values = [v for (_, _, label), values in table.items() if label == MSE_LABEL for v in values]
    width = 10 + _panel_width(len(PLOTTED), len(lambdas)) + (20 + _panel_width(1, len(lambdas)) if mse_values else 0)
    image = Image.new("RGB", (width, 400), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), "toy DEEM, lambda_CSR ablation: mean +- std over seeds (dots: seeds)", fill="black")  # PIL's default font has no λ
    right = _panel(draw, table, lambdas, PLOTTED, 1.0, 10)
    if mse_values:
        draw.line([(right, 30), (right, 340)], fill=(160, 160, 160))
        draw.text((right + 10, 22), "reconstruction MSE (lower is better)", fill="black")
        _panel(draw, table, lambdas, (MSE_LABEL,), 1.2 * max(mse_values), right + 20)
    for index, lam in enumerate(lambdas):
        draw.rectangle([60 + index * 110, 370, 72 + index * 110, 382], fill=PALETTE[index % len(PALETTE)])
        draw.text((78 + index * 110, 370), f"lambda_CSR = {lam:g}", fill="black")
    image.save(path)
    return path


def write_report(folder: str | Path, docs_dir: str | Path | None = None) -> str:
    """TOY_STUDY.md and toy_study.png in the study folder (and copies in `docs_dir`)."""
    folder = Path(folder)
    results = json.loads((folder / "results.json").read_text())
    table = aggregate(results)
    lambdas = sorted({run["csr_loss_weight"] for run in results["runs"].values()})
    seeds = sorted({run["seed"] for run in results["runs"].values()})
    runs_per_lambda = {lam: sum(run["csr_loss_weight"] == lam for run in results["runs"].values()) for lam in lambdas}
    lines = [f"Seeds {seeds}; λ_CSR {[f'{lam:g}' for lam in lambdas]}; values mean ± std over the seeds each λ ran "
             "(n in the column head; ± 0.000 where n = 1).", "",
             "| stage | metric | " + " | ".join(f"λ_CSR = {lam:g} (n = {runs_per_lambda[lam]})" for lam in lambdas)
             + " |",
             "|---|---|" + "---|" * len(lambdas)]
    for stage in ("stage1", "stage2"):
        for label, *_ in METRICS:
            cells = []
            for lam in lambdas:
                values = table.get((lam, stage, label))
                cells.append("—" if not values else "{:.3f} ± {:.3f}".format(*mean_std(values)))
            lines.append(f"| {stage} | {label} | " + " | ".join(cells) + " |")
    if 0.0 in lambdas and len(lambdas) > 1:
        lines += ["", "Computed verdict (CSR on = λ_CSR 5 if run, else the largest λ, vs off = 0):", ""]
        on = 5.0 if 5.0 in lambdas else max(lambdas)
        lines += [f"- {line}" for line in verdict(table, 0.0, on)]
    seconds = sum(run.get("seconds", 0) for run in results["runs"].values())
    stage0 = {part: json.loads((folder / "stage0" / part / "report.json").read_text()).get("seconds", 0)
              for part in ("clip", "lm", "sd") if (folder / "stage0" / part / "report.json").exists()}
    lines += ["", f"Time on this machine (2 CPU cores): stage 0 {sum(stage0.values()) / 60:.1f} min "
                  f"({', '.join(f'{k} {v / 60:.1f}' for k, v in stage0.items())}); the {len(results['runs'])} runs' "
                  f"training and evaluation {seconds / 60:.1f} min; data and benchmark building not counted."]
    text = "\n".join(lines) + "\n"
    (folder / "TOY_STUDY.md").write_text(text)
    plot(table, lambdas, folder / "toy_study.png")
    if docs_dir is not None:
        Path(docs_dir).mkdir(parents=True, exist_ok=True)
        (Path(docs_dir) / "toy_study_results.md").write_text(text)
        shutil.copyfile(folder / "toy_study.png", Path(docs_dir) / "toy_study.png")
    return text


if __name__ == "__main__":
    print(write_report(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
