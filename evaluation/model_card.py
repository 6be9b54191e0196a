"""`python -m evaluation <benchmark> ... --update-card`: a run's scores go into the model folder's card (README.md).

The scores are written twice: as `model-index` metadata (huggingface_hub `EvalResult`s, which the hub shows) and as
a table in the card's text between `EVAL_START` and `EVAL_END` (the section a DEEM card has; appended to a card
without one). A run replaces the earlier results of the same benchmark, data key and prompt and keeps the others.
A folder without a README.md gets DEEM's card first (when it holds a DEEM config), or a bare one. Hub ids are
left alone: only a local folder's card is changed.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from modeling_deem.model_card_deem import EVAL_END, EVAL_START, model_card

from .metrics import RAW_METRICS, score_text

_SECTION = re.compile(re.escape(EVAL_START) + r".*?" + re.escape(EVAL_END), re.DOTALL)


def update_card(model: str | os.PathLike, summary: dict[str, Any]) -> str:
    """Add one run's scores (`BenchmarkResult.summary()`) to the card of the folder `model`; returns what it did."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return f"--update-card: {model} is not a local folder; no card changed."
    path = folder / "README.md"
    card = ModelCard.load(path) if path.is_file() else new_card(folder)
    kept = [r for r in card.data.eval_results or [] if _run_of(r) != _run_of_summary(summary)]
    card.data.eval_results = kept + eval_results(summary)
    card.data.model_name = card.data.model_name or folder.resolve().name
    section = f"{EVAL_START}\n{results_table(card.data.eval_results)}\n{EVAL_END}"
    if _SECTION.search(card.text):
        text = _SECTION.sub(lambda _: section, card.text, count=1)
    else:
        text = card.text.rstrip() + f"\n\n## Evaluation results\n\n{section}\n"
    _write(path, f"---\n{card.data.to_yaml()}\n---\n\n" + text.lstrip("\n"))
    return f"updated the card {path} ({len(card.data.eval_results)} scores)"


def new_card(folder: Path) -> ModelCard:
    """DEEM's own card for a DEEM folder saved without one; a bare card for any other model."""
    config_file = folder / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == "deem":
        from modeling_deem import DeemConfig

        return model_card(DeemConfig.from_pretrained(folder), folder.resolve().name)
    data = ModelCardData(model_name=folder.resolve().name)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {folder.resolve().name}\n")


def eval_results(summary: dict[str, Any]) -> list[EvalResult]:
    """One `EvalResult` per score of the run."""
    benchmark, key, prompt = summary["benchmark"], summary.get("data_key"), summary.get("prompt")
    return [EvalResult(task_type="image-text-to-text", dataset_type=benchmark,
                       dataset_name=f"{benchmark} ({key})" if key else benchmark, dataset_config=prompt,
                       metric_type=metric, metric_value=round(float(value), 6))
            for metric, value in sorted(summary["scores"].items())]


def results_table(results: list[EvalResult]) -> str:
    """Markdown: one table per benchmark, one row per data and prompt, one column per metric."""
    runs: dict[tuple, dict[str, Any]] = {}
    for result in results:
        runs.setdefault(_run_of(result), {})[result.metric_type] = result.metric_value
    tables = []
    for benchmark in sorted({run[0] for run in runs}):
        mine = {run: scores for run, scores in runs.items() if run[0] == benchmark}
        metrics = sorted({metric for scores in mine.values() for metric in scores})
        lines = [f"**{benchmark}**", "", "| data | prompt | " + " | ".join(metrics) + " |",
                 "|---|---|" + "---|" * len(metrics)]
        for (_, data, prompt), scores in mine.items():
            cells = [_score(metric, scores[metric]) if metric in scores else "" for metric in metrics]
            lines.append(f"| {data} | {prompt or '-'} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    note = ("Scores in % (" + ", ".join(RAW_METRICS) + " as it is), from `python -m evaluation`. They belong to "
            "these weights: a later save_pretrained into this folder rewrites a generated card without them.")
    return "\n\n".join(tables) + "\n\n" + note


def _run_of(result: EvalResult) -> tuple[str, str, str | None]:
    return result.dataset_type, result.dataset_name, result.dataset_config


def _run_of_summary(summary: dict[str, Any]) -> tuple[str, str, str | None]:
    return _run_of(eval_results({**summary, "scores": {"_": 0.0}})[0])


def _score(metric: str, value: Any) -> str:
    if not isinstance(value, (int, float)):
        return str(value)
    return score_text(metric, value)


def _write(path: Path, content: str) -> None:
    """Replace the file in one rename, so a kill never leaves half a card."""
    handle, temporary = tempfile.mkstemp(prefix=".README.", suffix=".md", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(content)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
