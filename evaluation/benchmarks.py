"""Benchmark files → checked rows → questions → answers → scores, with per-sample records and counted skips.

All rows are read and checked (`validation.prepare_rows`) before any model answers: `load_benchmark` first, then
`run_benchmark` per model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .answering import ImageQuestionAnswerer, Question
from .answers import lmms_eval_answer, parse_yes_no, pope_official_answer, yorn_extraction
from .metrics import (
    caption_metrics,
    mmvp_pair_accuracy,
    pope_metrics,
    unmatched_counts,
    vqa_soft_accuracy,
    yes_no_accuracy,
)
from .result_keys import data_key
from .rows import Row, read_located_rows, read_rows
from .validation import RowRules, option_choices, prepare_rows

__all__ = ["BENCHMARKS", "BenchmarkResult", "LoadedBenchmark", "evaluate_benchmark", "load_benchmark",
           "read_public_layout", "read_rows", "run_benchmark"]

# The paper's questions (processing.prompts_deem.PRESET_QUESTIONS), as POPE_QUESTION, CAPTION_QUESTION and
# VQA_QUESTION; looked up when used (module `__getattr__`), since importing `processing` imports the model code.
_PRESET_NAMES = {"POPE_QUESTION": "pope", "CAPTION_QUESTION": "caption", "VQA_QUESTION": "vqa"}
_LEADING_LETTER = re.compile(r"\(?\s*([a-z])\s*(?:[).:,]|\s|$)")  # "(a)", "a", "a.", "(a) yes", "a) ..."

# Published POPE numbers read the same answers three ways; all three are reported, POPE's own is the headline
# (`scores`). name: (how an answer is read, does recall count non-yes/no answers as misses, the rule and source).
POPE_HEADLINE = "pope_official"
POPE_CONVENTIONS: dict[str, tuple[Callable[[str], str], bool, str]] = {
    "pope_official": (pope_official_answer, True, "POPE's evaluate.py (github.com/RUCAIBox/POPE): text before the "
                      "first '.', commas removed, split on spaces; a word No/not/no -> no, anything else -> yes"),
    "lmms_eval": (lmms_eval_answer, False, "lmms-eval lmms_eval/tasks/pope/utils.py: prediction.lower().strip() == "
                  "label; recall = TP / (TP + answers exactly 'no' to yes-questions); its own pope_yes_ratio counts "
                  "labels, the yes_ratio here counts predictions"),
    "vlmevalkit": (yorn_extraction, True, "VLMEvalKit vlmeval/dataset/utils/yorn.py YOrN_Extraction + POPE_rating, "
                   "exact matching (no LLM judge): 'yes' without 'no' -> yes, 'no' without 'yes' -> no, else "
                   "Unknown, which is wrong and not a positive; VLMEvalKit's headline is the overall F1"),
}

# Known wrong answers of the public MMVP Questions.csv (1-based Index; github.com/tsb0601/MMVP and the
# huggingface.co/datasets/MMVP/MMVP copy): in two pairs the answers of the two questions are swapped. Reported in
# tsb0601/MMVP issues #14 (279/280) and #30 (99, 100, 279, 280), checked in EvolvingLMMs-Lab/lmms-eval issue #1018
# and corrected the same way by lmms-eval's MMVP task (lmms_eval/tasks/mmvp README, "Ground Truth Corrections").
# Index: (a word its question must contain, the right option). A file whose question differs is left alone.
MMVP_CORRECTIONS = {99: ("tusks", "(b)"), 100: ("tusks", "(a)"), 279: ("sitting", "(b)"), 280: ("sitting", "(a)")}
MMVP_SOURCES = "tsb0601/MMVP issues #14, #30; EvolvingLMMs-Lab/lmms-eval issue #1018"


@dataclass
class BenchmarkResult:
    benchmark: str
    model: str
    scores: dict[str, float]
    records: list[dict[str, Any]]
    skipped: dict[str, int] = field(default_factory=dict)
    data_key: str | None = None  # None: results kept under the benchmark folder itself (the matching commands)
    skipped_rows: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # e.g. POPE's headline and conventions, MMVP's answers
    prompt: str | None = None  # the prompt layout (paper / generic): part of the run's identity

    def summary(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "model": self.model, "prompt": self.prompt, "scores": self.scores,
                "evaluated": len(self.records), "skipped": self.skipped, "data_key": self.data_key, **self.details}


@dataclass
class LoadedBenchmark:
    """A benchmark's checked rows, ready for any number of models."""

    benchmark: str
    rows: list[dict[str, Any]]
    skipped: dict[str, int]
    skipped_rows: list[dict[str, Any]]
    data_key: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def notes(self) -> list[str]:
        """Lines a report prints under its table (e.g. which MMVP answers were used)."""
        return [part["note"] for part in self.details.values() if isinstance(part, dict) and "note" in part]


def read_public_layout(benchmark: str, folder: Path, mmvp_original_answers: bool = False) -> list[Row]:
    """POPE: `coco_pope_{random,popular,adversarial}.json` (JSON lines: image, text, label; the split from the
    file name). MMVP: `Questions.csv` (Index, Question, Options, Correct Answer; the Hugging Face copy spells the
    first column `lndex`) with `MMVP Images/<Index>.jpg`; questions 1-2, 3-4, ... are the pairs; the known wrong
    answers (MMVP_CORRECTIONS) are corrected unless `mmvp_original_answers`."""
    rows = [row for _, part in _public_layout(benchmark, folder) for row in part]
    if benchmark == "mmvp" and not mmvp_original_answers:
        correct_mmvp_answers(rows)
    return rows


def correct_mmvp_answers(rows: list[Row]) -> list[int]:
    """Sets the right answer at each MMVP_CORRECTIONS index whose question matches; the Index values changed (the
    file's answer kept as `answer_original`). Already-right answers stay as they are."""
    changed = []
    for row in rows:
        fields = row.fields
        fix = MMVP_CORRECTIONS.get(fields.get("index"))
        if fix is None or fix[0] not in str(fields["question"]).lower():
            continue
        if str(fields["answer"]).strip().lower().strip("()")[:1] != fix[1][1]:
            fields["answer_original"], fields["answer"] = fields["answer"], fix[1]
            changed.append(fields["index"])
    return changed


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
            index_column = "Index" if "Index" in fields or "lndex" not in fields else "lndex"
            if missing := [c for c in (index_column, "Question", "Options", "Correct Answer") if c not in fields]:
                raise ValueError(f"{row.where}: no {', '.join(missing)} column (MMVP's Questions.csv has them).")
            try:
                index = int(fields[index_column])
            except (TypeError, ValueError) as error:
                raise ValueError(f"{row.where}: Index {fields[index_column]!r} is not a question number.") from error
            rows.append(Row({"image": f"MMVP Images/{fields[index_column]}.jpg", "index": index,
                             "question": fields["Question"], "options": fields["Options"],
                             "answer": fields["Correct Answer"], "pair_id": (index - 1) // 2},
                            path, row.line, row.unit))
        return [(path, rows)]
    raise ValueError(f"{benchmark} reads a data file, not a folder.")


def load_benchmark(benchmark: str, data: str | Path, image_root: str | Path | None = None,
                   limit: int | None = None, mmvp_original_answers: bool = False) -> LoadedBenchmark:
    """Reads and checks every row (and opens the images of the rows within `limit`) before anything is answered.

    MMVP's public Questions.csv (its folder, or the file itself) gets its known wrong answers corrected unless
    `mmvp_original_answers`; the data key then names the corrected data, so the two never share a table."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}.")
    rules = BENCHMARKS[benchmark][0]
    data = Path(data)
    public = data if data.is_dir() else data.parent if (benchmark, data.name) == ("mmvp", "Questions.csv") else None
    name, details = data.name, {}
    if public is not None:  # a benchmark's public folder layout
        files = _public_layout(benchmark, public)
        rows, default_root = [row for _, part in files for row in part], public
    else:
        rows, default_root = read_located_rows(data), data.parent
        files = [(data, rows)]
    if benchmark == "mmvp":
        changed = [] if mmvp_original_answers or public is None else correct_mmvp_answers(rows)
        details["ground_truth"] = _mmvp_note(changed, mmvp_original_answers, public is not None)
        name = f"{Path(name).stem}-corrected" if changed else name
    prepared = prepare_rows(rows, Path(image_root) if image_root else default_root, rules, limit)
    return LoadedBenchmark(benchmark, prepared.rows, prepared.skipped, prepared.skipped_rows,
                           data_key(name, [path for path, _ in files], limit), details)


def _mmvp_note(changed: list[int], original: bool, public: bool) -> dict[str, Any]:
    known = ", ".join(map(str, MMVP_CORRECTIONS))
    if not public:
        note = "MMVP ground truth: the data file's answers (corrections apply to the public Questions.csv only)."
    elif original:
        note = (f"MMVP ground truth: the file's own answers (--mmvp-original-answers), known wrong ones at Index "
                f"{known} included ({MMVP_SOURCES}).")
    elif changed:
        note = (f"MMVP ground truth: corrected at Index {', '.join(map(str, changed))} (swapped answers of the public "
                f"Questions.csv; {MMVP_SOURCES}); --mmvp-original-answers scores the file as it is.")
    else:
        note = f"MMVP ground truth: the file's answers (no known wrong answer found at Index {known})."
    return {"corrected": changed, "original_answers": original, "note": note}


def run_benchmark(loaded: LoadedBenchmark, answerer: ImageQuestionAnswerer, model_name: str = "") -> BenchmarkResult:
    _, question_of, score = BENCHMARKS[loaded.benchmark]
    rows = loaded.rows
    questions = [Question(i, row["image_path"], question_of(row)) for i, row in enumerate(rows)]
    answers = answerer.answer(questions)
    records = [{**{k: v for k, v in row.items() if k != "image_path"}, "prompt": questions[i].text,
                "prediction": answers[i]} for i, row in enumerate(rows)]
    scored = score(records) if records else {}  # numbers are scores; dicts are details (headline, conventions)
    scores = {k: v for k, v in scored.items() if not isinstance(v, dict)}
    details = {**loaded.details, **{k: v for k, v in scored.items() if isinstance(v, dict)}}
    return BenchmarkResult(loaded.benchmark, model_name, scores, records, dict(loaded.skipped), loaded.data_key,
                           list(loaded.skipped_rows), details)


def evaluate_benchmark(benchmark: str, answerer: ImageQuestionAnswerer, data: str | Path,
                       image_root: str | Path | None = None, limit: int | None = None,
                       model_name: str = "", mmvp_original_answers: bool = False) -> BenchmarkResult:
    """`load_benchmark` then `run_benchmark`, for one model."""
    return run_benchmark(load_benchmark(benchmark, data, image_root, limit, mmvp_original_answers), answerer,
                         model_name)


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


def _score_pope(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Scores (POPE's official rule, overall and `<split>_<metric>`), plus every convention's numbers, overall and
    per split, with the count of answers it could not read; each record keeps each convention's reading."""
    labels = [str(r["label"]).strip().lower() for r in records]
    splits = sorted({r.get("split", "") for r in records} - {""})
    groups = {"overall": list(range(len(records)))}
    groups.update({split: [i for i, r in enumerate(records) if r.get("split") == split] for split in splits})
    conventions: dict[str, Any] = {}
    for name, (read, recall_counts_unmatched, rule) in POPE_CONVENTIONS.items():
        predictions = [read(r["prediction"]) for r in records]
        for record, reading in zip(records, predictions):
            record["parsed" if name == POPE_HEADLINE else f"parsed_{name}"] = reading
        conventions[name] = {"rule": rule}
        for group, subset in groups.items():
            picked = [predictions[i] for i in subset]
            conventions[name][group] = {**pope_metrics(picked, [labels[i] for i in subset], recall_counts_unmatched),
                                        **unmatched_counts(picked), "count": len(subset)}
    scores = {}
    for group in groups:
        for metric in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            value = conventions[POPE_HEADLINE][group][metric]
            scores[metric if group == "overall" else f"{group}_{metric}"] = value
    headline = {"convention": POPE_HEADLINE, "metric": "accuracy",
                "note": "POPE scores follow POPE's official evaluate.py (headline); lmms-eval's and VLMEvalKit's "
                        "readings of the same answers are under 'conventions' (compare a published number with the "
                        "convention it used)."}
    return {**scores, "headline": headline, "conventions": conventions}


def _score_mmvp(records: list[dict[str, Any]]) -> dict[str, float]:
    for record in records:
        choices = option_choices(record.get("options"))
        record["parsed"] = _predicted_option(str(record["prediction"]), choices)
        record["correct"] = _option_matches(record["prediction"], str(record["answer"]), choices)
    return {"pair_accuracy": mmvp_pair_accuracy([r["correct"] for r in records], [r["pair_id"] for r in records]),
            "question_accuracy": sum(r["correct"] for r in records) / len(records)}


def _predicted_option(prediction: str, choices: dict[str, str]) -> str | None:
    """The option letter a model's answer names: a leading letter ("(a)", "a", "A.", "(b) No", "a) ..."), else the
    option whose text it starts with ("No", "No, it is not."; the longest such option); None for anything else."""
    text = " ".join(prediction.split()).lower()
    if match := _LEADING_LETTER.match(text):
        return match.group(1)
    options = {key: " ".join(option.split()).lower() for key, option in choices.items()}
    named = [(len(option), key) for key, option in options.items()
             if option and text.startswith(option) and not text[len(option):len(option) + 1].isalnum()]
    return max(named)[1] if named else None


def _option_matches(prediction: str, answer: str, choices: dict[str, str] | None = None) -> bool:
    """Whether a model's answer names the right MMVP option. The ground truth is an option letter ("(a)"; validation
    normalises it), compared with the letter the answer names (`_predicted_option`); a ground truth that is no
    letter (a row without options) is compared as text. Any prediction string is read, none raises."""
    letter = " ".join(answer.split()).lower().strip("()")
    if len(letter) == 1 and letter.isalpha():
        return _predicted_option(prediction, choices or {}) == letter
    return " ".join(prediction.split()).lower().startswith(" ".join(answer.split()).lower())


def _score_vqa(records: list[dict[str, Any]]) -> dict[str, float]:
    for record in records:
        record["accuracy"] = vqa_soft_accuracy(record["prediction"], record["answers"])
    return {"accuracy": sum(r["accuracy"] for r in records) / len(records)}


def _score_caption(records: list[dict[str, Any]]) -> dict[str, float]:
    predictions = {str(i): r["prediction"] for i, r in enumerate(records)}
    references = {str(i): list(r["references"]) for i, r in enumerate(records)}
    return caption_metrics(predictions, references)


def __getattr__(name: str) -> str:
    if name in _PRESET_NAMES:
        return _preset_question(_PRESET_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _preset_question(task: str) -> str:
    from processing.prompts_deem import PRESET_QUESTIONS

    return PRESET_QUESTIONS[task]


def _field(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: row[name]


BENCHMARKS: dict[str, tuple[RowRules, Callable[[dict[str, Any]], str], Callable]] = {
    # name: (what its rows must satisfy, its question, the scorer)
    "robustvqa": (RowRules(("question", "answer"), yes_no_label="answer"), _field("question"), _score_robustvqa),
    "pope": (RowRules(("label", "text|object"), yes_no_label="label"),
             lambda r: r.get("text") or _preset_question("pope").format(object=r["object"]), _score_pope),
    "mmvp": (RowRules(("question", "answer", "pair_id"), answer_in_options=True, pair_key="pair_id"),
             lambda r: f"{r['question']} {r.get('options', '')}".strip(), _score_mmvp),
    "vqav2": (RowRules(("question", "answers")), lambda r: _preset_question("vqa").format(question=r["question"]),
              _score_vqa),
    "caption": (RowRules(("references",)), lambda r: _preset_question("caption"), _score_caption),
}
