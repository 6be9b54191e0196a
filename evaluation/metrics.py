"""Benchmark scores computed from predictions (never from a model's own claims)."""

from __future__ import annotations

from collections.abc import Sequence

from .answers import normalize_vqa_answer

# How scores are shown (tables, model cards): these as they are; every other score is a fraction, shown in %.
RAW_METRICS = ("cider",)


def score_text(metric: str, value: float) -> str:
    """A score as the paper's tables show it: "12.34" (%) for a fraction, "1.234" for a RAW_METRICS one."""
    return f"{value:.3f}" if metric in RAW_METRICS else f"{100 * value:.2f}"


def yes_no_accuracy(predictions: Sequence[str | None], labels: Sequence[str]) -> float:
    """RobustVQA's metric: the share of questions answered with the right yes/no (an unparsed answer is wrong)."""
    _same_length(predictions, labels)
    return sum(p == y for p, y in zip(predictions, labels)) / len(labels) if labels else float("nan")


def pope_metrics(predictions: Sequence[str | None], labels: Sequence[str],
                 recall_counts_unmatched: bool = True) -> dict[str, float]:
    """POPE: accuracy, precision, recall and F1 with "yes" as positive, and the share of predictions that are yes.

    A prediction other than "yes"/"no" (unparsed, VLMEvalKit's Unknown, lmms-eval's non-exact text) is wrong for
    accuracy and never a positive. With `recall_counts_unmatched=False` (lmms-eval's recall) a yes-question so
    answered is left out of recall, whose misses are only the answers "no"; VLMEvalKit and POPE count it as a miss.
    """
    _same_length(predictions, labels)
    pairs = list(zip(predictions, labels))
    tp = sum(p == "yes" and y == "yes" for p, y in pairs)
    fp = sum(p == "yes" and y == "no" for p, y in pairs)
    fn = sum(y == "yes" and (p != "yes" if recall_counts_unmatched else p == "no") for p, y in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": yes_no_accuracy(predictions, labels),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": sum(p == "yes" for p in predictions) / len(predictions) if predictions else float("nan"),
    }


def unmatched_counts(predictions: Sequence[str | None]) -> dict[str, float]:
    """How many predictions are neither "yes" nor "no" (counted as wrong above), and their share."""
    count = sum(p not in ("yes", "no") for p in predictions)
    return {"unknown": count, "unknown_ratio": count / len(predictions) if predictions else float("nan")}


def mmvp_pair_accuracy(correct: Sequence[bool], pair_ids: Sequence[str | int]) -> float:
    """MMVP: a pair of questions counts only if both are answered correctly."""
    _same_length(correct, pair_ids)
    pairs: dict[str | int, list[bool]] = {}
    for ok, pair in zip(correct, pair_ids):
        pairs.setdefault(pair, []).append(bool(ok))
    incomplete = [pair for pair, answers in pairs.items() if len(answers) != 2]
    if incomplete:
        raise ValueError(f"MMVP pairs need exactly two questions; pairs {incomplete[:5]} do not have two.")
    return sum(all(answers) for answers in pairs.values()) / len(pairs) if pairs else float("nan")


def vqa_soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2: min(#humans who gave the answer / 3, 1), averaged over the 10 leave-one-annotator-out subsets."""
    if not answers:
        raise ValueError("A VQA question needs its human answers.")
    guess = normalize_vqa_answer(prediction)
    normalized = [normalize_vqa_answer(a) for a in answers]
    scores = []
    for left_out in range(len(normalized)):
        others = normalized[:left_out] + normalized[left_out + 1 :]
        scores.append(min(1.0, sum(a == guess for a in others) / 3.0))
    return sum(scores) / len(scores)


def caption_metrics(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """COCO caption scores (BLEU-1..4, METEOR, CIDEr) with `pycocoevalcap`, the COCO team's own implementation.

    `evaluate`'s metrics live on the hub (unavailable offline) and its CIDEr is community code; pycocoevalcap is
    what published COCO numbers use (PTB tokenisation and METEOR run on Java).
    """
    import contextlib
    import io

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    missing = sorted(set(references) - set(predictions))
    if missing:
        raise ValueError(f"No prediction for {len(missing)} images (e.g. {missing[:3]}).")
    tokenizer = PTBTokenizer()
    refs = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
    preds = tokenizer.tokenize({k: [{"caption": predictions[k]}] for k in references})
    scores: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints its BLEU bookkeeping
        bleu, _ = Bleu(4).compute_score(refs, preds)
    scores.update({f"bleu_{n + 1}": float(b) for n, b in enumerate(bleu)})
    scores["meteor"] = float(Meteor().compute_score(refs, preds)[0])
    scores["cider"] = float(Cider().compute_score(refs, preds)[0])
    return scores


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions for {len(b)} labels.")
