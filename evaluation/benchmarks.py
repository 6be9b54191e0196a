"""Benchmark files → questions → answers → scores, with per-sample records and counted skips."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .answering import ImageQuestionAnswerer, Question
from .answers import parse_yes_no
from .metrics import caption_metrics, mmvp_pair_accuracy, pope_metrics, vqa_soft_accuracy, yes_no_accuracy

POPE_QUESTION = "Is there a {object} in the image? Please answer yes or no."
CAPTION_QUESTION = "Could you provide a short description of the image?"
VQA_QUESTION = "{question} Please provide an accurate answer within one word."


@dataclass
class BenchmarkResult:
    benchmark: str
    model: str
    scores: dict[str, float]
    records: list[dict[str, Any]]
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "model": self.model, "scores": self.scores,
                "evaluated": len(self.records), "skipped": self.skipped}


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """JSON lines, a JSON list, or a CSV with a header."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Benchmark data {path} does not exist.")
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    text = path.read_text().strip()
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_public_layout(benchmark: str, folder: Path) -> list[dict[str, Any]]:
    """POPE: `coco_pope_{random,popular,adversarial}.json` (JSON lines: image, text, label; the split from the
    file name). MMVP: `Questions.csv` (Index, Question, Options, Correct Answer) with `MMVP Images/<Index>.jpg`;
    questions 1-2, 3-4, ... are the pairs."""
    if benchmark == "pope":
        files = sorted(folder.glob("*pope_*.json*"))
        if not files:
            raise FileNotFoundError(f"No *pope_<split>.json files in {folder}.")
        return [{**row, "split": path.name.split("pope_", 1)[1].split(".")[0]} for path in files
                for row in read_rows(path)]
    if benchmark == "mmvp":
        rows = read_rows(folder / "Questions.csv")
        return [{"image": f"MMVP Images/{row['Index']}.jpg", "question": row["Question"], "options": row["Options"],
                 "answer": row["Correct Answer"], "pair_id": (int(row["Index"]) - 1) // 2} for row in rows]
    raise ValueError(f"{benchmark} reads a data file, not a folder.")


def _resolve_image(row: dict[str, Any], image_root: Path | None) -> Path:
    value = row.get("image")
    if not value:
        raise KeyError("image")
    path = Path(value)
    return path if path.is_absolute() or image_root is None else image_root / path


def prepare(rows: list[dict[str, Any]], image_root: Path | None, required: tuple[str, ...],
            limit: int | None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Keeps the rows that can be evaluated; counts the others by reason (never substitutes anything).
    A required key "a|b" is satisfied by either field."""
    kept, skipped = [], {}
    for row in rows:
        if limit is not None and len(kept) >= limit:
            break
        reason = None
        if not row.get("image"):
            reason = "no image given"
        elif missing := [key for key in required if all(row.get(k) in (None, "", []) for k in key.split("|"))]:
            reason = "empty " + ", ".join(missing)
        elif not _resolve_image(row, image_root).exists():
            reason = "image file missing"
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        kept.append({**row, "image_path": str(_resolve_image(row, image_root))})
    return kept, skipped


def evaluate_benchmark(benchmark: str, answerer: ImageQuestionAnswerer, data: str | Path,
                       image_root: str | Path | None = None, limit: int | None = None, model_name: str = "") -> BenchmarkResult:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}.")
    required, question_of, score = BENCHMARKS[benchmark]
    data = Path(data)
    if data.is_dir():  # a benchmark's public folder layout
        rows, default_root = read_public_layout(benchmark, data), data
    else:
        rows, default_root = read_rows(data), data.parent
    rows, skipped = prepare(rows, Path(image_root) if image_root else default_root, required, limit)
    questions = [Question(i, row["image_path"], question_of(row)) for i, row in enumerate(rows)]
    answers = answerer.answer(questions)
    records = [{**{k: v for k, v in row.items() if k != "image_path"}, "prompt": questions[i].text,
                "prediction": answers[i]} for i, row in enumerate(rows)]
    return BenchmarkResult(benchmark, model_name, score(records) if records else {}, records, skipped)


def _yes_no_records(records: list[dict[str, Any]], label_key: str) -> tuple[list[str | None], list[str]]:
    for record in records:
        record["parsed"] = parse_yes_no(record["prediction"])
    return [r["parsed"] for r in records], [str(r[label_key]).strip().lower() for r in records]


def _score_robustvqa(records: list[dict[str, Any]]) -> dict[str, float]:
    predictions, labels = _yes_no_records(records, "answer")
    scores = {"accuracy": yes_no_accuracy(predictions, labels)}
    for source in sorted({r.get("source", "") for r in records} - {""}):
        subset = [i for i, r in enumerate(records) if r.get("source") == source]
        scores[f"accuracy_{source}"] = yes_no_accuracy([predictions[i] for i in subset], [labels[i] for i in subset])
    return scores


def _score_pope(records: list[dict[str, Any]]) -> dict[str, float]:
    predictions, labels = _yes_no_records(records, "label")
    scores = pope_metrics(predictions, labels)
    splits = sorted({r.get("split", "") for r in records} - {""})
    for split in splits:
        subset = [i for i, r in enumerate(records) if r.get("split") == split]
        for name, value in pope_metrics([predictions[i] for i in subset], [labels[i] for i in subset]).items():
            scores[f"{split}_{name}"] = value
    return scores


def _score_mmvp(records: list[dict[str, Any]]) -> dict[str, float]:
    for record in records:
        record["correct"] = _option_matches(record["prediction"], str(record["answer"]))
    return {"pair_accuracy": mmvp_pair_accuracy([r["correct"] for r in records], [r["pair_id"] for r in records]),
            "question_accuracy": sum(r["correct"] for r in records) / len(records)}


def _option_matches(prediction: str, answer: str) -> bool:
    """MMVP answers are options like "(a)" or their text: compare the option letter, else the normalised text."""
    text = prediction.strip().lower()
    letter = answer.strip().lower().strip("()")
    if len(letter) == 1 and letter.isalpha():
        first = text.lstrip("(").split(")")[0].split(".")[0].split()[0] if text else ""
        return first == letter
    return text.startswith(answer.strip().lower())


def _score_vqa(records: list[dict[str, Any]]) -> dict[str, float]:
    for record in records:
        record["accuracy"] = vqa_soft_accuracy(record["prediction"], record["answers"])
    return {"accuracy": sum(r["accuracy"] for r in records) / len(records)}


def _score_caption(records: list[dict[str, Any]]) -> dict[str, float]:
    predictions = {str(i): r["prediction"] for i, r in enumerate(records)}
    references = {str(i): list(r["references"]) for i, r in enumerate(records)}
    return caption_metrics(predictions, references)


def _field(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: row[name]


BENCHMARKS: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any]], str], Callable]] = {
    # name: (fields a row must have, its question, the scorer)
    "robustvqa": (("question", "answer"), _field("question"), _score_robustvqa),
    "pope": (("label", "text|object"), lambda r: r.get("text") or POPE_QUESTION.format(object=r["object"]), _score_pope),
    "mmvp": (("question", "answer", "pair_id"),
             lambda r: f"{r['question']} {r.get('options', '')}".strip(), _score_mmvp),
    "vqav2": (("question", "answers"), lambda r: VQA_QUESTION.format(question=r["question"]), _score_vqa),
    "caption": (("references",), lambda r: CAPTION_QUESTION, _score_caption),
}
