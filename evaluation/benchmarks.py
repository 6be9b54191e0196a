"""Benchmark files → checked rows → questions → answers → scores, with per-sample records and counted skips.

All rows are read and checked (`validation.prepare_rows`) before any model answers: `load_benchmark` first, then
`run_benchmark` per model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .answering import ImageQuestionAnswerer, Question
from .answers import parse_yes_no
from .metrics import caption_metrics, mmvp_pair_accuracy, pope_metrics, vqa_soft_accuracy, yes_no_accuracy
from .result_keys import data_key
from .rows import Row, read_located_rows, read_rows
from .validation import RowRules, prepare_rows

__all__ = ["BENCHMARKS", "BenchmarkResult", "LoadedBenchmark", "evaluate_benchmark", "load_benchmark",
           "read_public_layout", "read_rows", "run_benchmark"]

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
    data_key: str | None = None  # None: results kept under the benchmark folder itself (the matching commands)
    skipped_rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "model": self.model, "scores": self.scores,
                "evaluated": len(self.records), "skipped": self.skipped, "data_key": self.data_key}


@dataclass
class LoadedBenchmark:
    """A benchmark's checked rows, ready for any number of models."""

    benchmark: str
    rows: list[dict[str, Any]]
    skipped: dict[str, int]
    skipped_rows: list[dict[str, Any]]
    data_key: str


def read_public_layout(benchmark: str, folder: Path) -> list[Row]:
    """POPE: `coco_pope_{random,popular,adversarial}.json` (JSON lines: image, text, label; the split from the
    file name). MMVP: `Questions.csv` (Index, Question, Options, Correct Answer) with `MMVP Images/<Index>.jpg`;
    questions 1-2, 3-4, ... are the pairs."""
    return [row for _, rows in _public_layout(benchmark, folder) for row in rows]


def _public_layout(benchmark: str, folder: Path) -> list[tuple[Path, list[Row]]]:
    """(file, its rows) for each data file of a public layout."""
    if benchmark == "pope":
        files = sorted(folder.glob("*pope_*.json*"))
        if not files:
            raise FileNotFoundError(f"No *pope_<split>.json files in {folder}.")
        return [(path, [Row({**row.fields, "split": path.name.split("pope_", 1)[1].split(".")[0]}, path, row.line,
                            row.unit) for row in read_located_rows(path)]) for path in files]
    if benchmark == "mmvp":
        path = folder / "Questions.csv"
        rows = []
        for row in read_located_rows(path):
            fields = row.fields
            if missing := [c for c in ("Index", "Question", "Options", "Correct Answer") if c not in fields]:
                raise ValueError(f"{row.where}: no {', '.join(missing)} column (MMVP's Questions.csv has them).")
            try:
                pair = (int(fields["Index"]) - 1) // 2
            except (TypeError, ValueError) as error:
                raise ValueError(f"{row.where}: Index {fields['Index']!r} is not a question number.") from error
            rows.append(Row({"image": f"MMVP Images/{fields['Index']}.jpg", "question": fields["Question"],
                             "options": fields["Options"], "answer": fields["Correct Answer"],
                             "pair_id": pair}, path, row.line, row.unit))
        return [(path, rows)]
    raise ValueError(f"{benchmark} reads a data file, not a folder.")


def load_benchmark(benchmark: str, data: str | Path, image_root: str | Path | None = None,
                   limit: int | None = None) -> LoadedBenchmark:
    """Reads and checks every row (and opens the images of the rows within `limit`) before anything is answered."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}.")
    rules = BENCHMARKS[benchmark][0]
    data = Path(data)
    if data.is_dir():  # a benchmark's public folder layout
        files = _public_layout(benchmark, data)
        rows, default_root = [row for _, part in files for row in part], data
    else:
        rows, default_root = read_located_rows(data), data.parent
        files = [(data, rows)]
    prepared = prepare_rows(rows, Path(image_root) if image_root else default_root, rules, limit)
    return LoadedBenchmark(benchmark, prepared.rows, prepared.skipped, prepared.skipped_rows,
                           data_key(data.name, [path for path, _ in files], limit))


def run_benchmark(loaded: LoadedBenchmark, answerer: ImageQuestionAnswerer, model_name: str = "") -> BenchmarkResult:
    _, question_of, score = BENCHMARKS[loaded.benchmark]
    rows = loaded.rows
    questions = [Question(i, row["image_path"], question_of(row)) for i, row in enumerate(rows)]
    answers = answerer.answer(questions)
    records = [{**{k: v for k, v in row.items() if k != "image_path"}, "prompt": questions[i].text,
                "prediction": answers[i]} for i, row in enumerate(rows)]
    return BenchmarkResult(loaded.benchmark, model_name, score(records) if records else {}, records,
                           dict(loaded.skipped), loaded.data_key, list(loaded.skipped_rows))


def evaluate_benchmark(benchmark: str, answerer: ImageQuestionAnswerer, data: str | Path,
                       image_root: str | Path | None = None, limit: int | None = None,
                       model_name: str = "") -> BenchmarkResult:
    """`load_benchmark` then `run_benchmark`, for one model."""
    return run_benchmark(load_benchmark(benchmark, data, image_root, limit), answerer, model_name)


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


BENCHMARKS: dict[str, tuple[RowRules, Callable[[dict[str, Any]], str], Callable]] = {
    # name: (what its rows must satisfy, its question, the scorer)
    "robustvqa": (RowRules(("question", "answer"), yes_no_label="answer"), _field("question"), _score_robustvqa),
    "pope": (RowRules(("label", "text|object"), yes_no_label="label"),
             lambda r: r.get("text") or POPE_QUESTION.format(object=r["object"]), _score_pope),
    "mmvp": (RowRules(("question", "answer", "pair_id"), answer_in_options=True, pair_key="pair_id"),
             lambda r: f"{r['question']} {r.get('options', '')}".strip(), _score_mmvp),
    "vqav2": (RowRules(("question", "answers")), lambda r: VQA_QUESTION.format(question=r["question"]), _score_vqa),
    "caption": (RowRules(("references",)), lambda r: CAPTION_QUESTION, _score_caption),
}
