"""Rows are checked before any answering: yes/no labels normalised or refused, MMVP answers within their options,
MMVP pairs kept or skipped whole, skips counted per reason in the results and the printed table."""

import json
import re

import pytest
from PIL import Image

import evaluation.answering
from evaluation.__main__ import main as evaluate_main
from evaluation.benchmarks import evaluate_benchmark
from evaluation.validation import yes_no_label


class FixedAnswerer:
    """Answers every question with one text, and remembers whether it was asked at all."""

    calls: list[int] = []

    def __init__(self, model="fixed", max_new_tokens=8, batch_size=8, text="yes", **settings):
        self.text = text

    def run_settings(self):
        return {"prompt_template": "{question}"}

    def answer(self, questions):
        FixedAnswerer.calls.append(len(questions))
        return {q.index: self.text for q in questions}


@pytest.fixture
def answerer():
    FixedAnswerer.calls = []
    return FixedAnswerer()


def write_rows(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


@pytest.fixture
def images(tmp_path):
    for index in range(4):
        Image.new("RGB", (8, 8), (60 * index, 0, 0)).save(tmp_path / f"{index}.png")
    return tmp_path


@pytest.mark.parametrize("value, expected", [
    ("yes", "yes"), (" No ", "no"), ("TRUE", "yes"), ("false", "no"), ("1", "yes"), (" 0", "no"), ("Yes\n", "yes"),
    (True, "yes"), (False, "no"), (1, "yes"), (0, "no"), ("maybe", None), (2, None), (1.0, None), ("y", None),
    (None, None), (["yes"], None),
])
def test_yes_no_labels(value, expected):
    assert yes_no_label(value) == expected


def test_pope_labels_in_any_unambiguous_spelling_are_scored_as_yes_or_no(images, answerer):
    labels = [True, "TRUE", " yes ", 1, "1", False, "False", " no", 0, "0"]
    data = write_rows(images / "pope.jsonl", [{"image": "0.png", "object": "cat", "label": label} for label in labels])
    result = evaluate_benchmark("pope", answerer, data)
    assert [r["label"] for r in result.records] == ["yes"] * 5 + ["no"] * 5
    assert result.scores["accuracy"] == pytest.approx(0.5)  # the model says "yes" to everything
    assert result.scores["recall"] == pytest.approx(1.0) and result.scores["precision"] == pytest.approx(0.5)

    robust = write_rows(images / "robust.jsonl", [{"image": "0.png", "question": "Is it a cat?", "answer": "True"},
                                                  {"image": "0.png", "question": "Is it a dog?", "answer": False}])
    assert evaluate_benchmark("robustvqa", answerer, robust).scores["accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize("bad", ["maybe", 2, "yes please", 0.5])
def test_an_ambiguous_pope_label_is_refused_with_file_line_and_value(images, answerer, bad):
    rows = [{"image": "0.png", "object": "cat", "label": "yes"}] * 2
    rows.append({"image": "0.png", "object": "dog", "label": bad})
    data = write_rows(images / "pope.jsonl", rows)
    expected = rf"pope\.jsonl, line 3: label {re.escape(repr(bad))} is not yes or no"
    with pytest.raises(ValueError, match=expected) as error:
        evaluate_benchmark("pope", answerer, data, limit=1)  # checked even past --limit
    assert str(data) in str(error.value)
    assert FixedAnswerer.calls == []


@pytest.mark.parametrize("answer", ["(a)", "(B)", "b", "No", "(b) No", " yes "])
def test_mmvp_answers_that_name_an_option_are_accepted(images, answerer, answer):
    rows = [{"image": "0.png", "question": "Red?", "options": "(a) Yes (b) No", "answer": answer, "pair_id": 7},
            {"image": "1.png", "question": "Red?", "options": ["Yes", "No"], "answer": "(a)", "pair_id": 7}]
    assert evaluate_benchmark("mmvp", answerer, write_rows(images / "mmvp.jsonl", rows)).summary()["evaluated"] == 2


@pytest.mark.parametrize("answer, options", [("(c)", "(a) Yes (b) No"), ("Maybe", "(a) Yes (b) No"),
                                             ("(c)", ["Yes", "No"])])
def test_an_mmvp_answer_outside_its_options_is_refused(images, answerer, answer, options):
    rows = [{"image": "0.png", "question": "Red?", "options": "(a) Yes (b) No", "answer": "(a)", "pair_id": 1},
            {"image": "1.png", "question": "Red?", "options": options, "answer": answer, "pair_id": 1}]
    data = write_rows(images / "mmvp.jsonl", rows)
    expected = rf"mmvp\.jsonl, line 2: answer {re.escape(repr(answer))} is not one of the options"
    with pytest.raises(ValueError, match=expected) as error:
        evaluate_benchmark("mmvp", answerer, data)
    assert repr(options) in str(error.value)
    rows[1]["options"], rows[1]["answer"] = "Yes or No", "Yes"
    with pytest.raises(ValueError, match=r"line 2: options 'Yes or No' are not lettered"):
        evaluate_benchmark("mmvp", answerer, write_rows(data, rows))
    assert FixedAnswerer.calls == []


@pytest.mark.parametrize("written", ["(a)", "(a) Yes", "Yes", " yes ", "(A)", "a"])
def test_an_mmvp_answer_written_any_accepted_way_is_scored_by_its_letter(images, written):
    """Regression: validation accepted "(a) Yes" and "Yes" as ground truth, then scoring marked "(a)" wrong."""
    rows = [{"image": "0.png", "question": "Red?", "options": "(a) Yes (b) No", "answer": written, "pair_id": 1},
            {"image": "1.png", "question": "Red?", "options": ["Yes", "No"], "answer": written, "pair_id": 1}]
    data = write_rows(images / "mmvp.jsonl", rows)
    for prediction in ("(a)", "a", "A.", "(a) Yes", "Yes", "Yes, it is red."):
        result = evaluate_benchmark("mmvp", FixedAnswerer(text=prediction), data)
        assert [r["answer"] for r in result.records] == ["(a)", "(a)"]
        assert result.scores["question_accuracy"] == 1.0, prediction
    for prediction in ("(b)", "No", "b) no", "Yesterday", "", "."):
        assert evaluate_benchmark("mmvp", FixedAnswerer(text=prediction), data).scores["question_accuracy"] == 0.0


@pytest.mark.parametrize("prediction", [".", "()", "(", ")", "", "   ", "...", "(.)", "?!", "\n", "(a", "ab c"])
def test_any_mmvp_prediction_is_scored_without_raising(prediction):
    """Regression: "." and "()" raised IndexError, so one odd answer crashed scoring after all the answering."""
    from evaluation.benchmarks import _option_matches

    choices = {"a": "Yes", "b": "No"}
    assert _option_matches(prediction, "(a)", choices) is (prediction == "(a")
    assert _option_matches(prediction, "(a)") is (prediction == "(a")
    assert _option_matches(prediction, "Yes") is False


def mmvp_rows(missing_second=True):
    """Pair 1 (lines 1-2) with line 2's image missing; pair 2 (lines 3-4) complete."""
    images = ["0.png", "absent.png" if missing_second else "1.png", "2.png", "3.png"]
    return [{"image": image, "question": "Red?", "options": "(a) Yes (b) No", "answer": "(a)" if i % 2 else "(b)",
             "pair_id": 1 + i // 2} for i, image in enumerate(images)]


def test_a_skipped_mmvp_row_takes_its_pair_partner_along(images, answerer):
    result = evaluate_benchmark("mmvp", FixedAnswerer(text="(a)"), write_rows(images / "mmvp.jsonl", mmvp_rows()))
    assert result.skipped == {"image file missing": 1, "pair partner skipped": 1}
    assert [r["pair_id"] for r in result.records] == [2, 2]
    assert result.scores["pair_accuracy"] == 0.0 and result.scores["question_accuracy"] == 0.5
    assert [(s["line"], s["reason"]) for s in result.skipped_rows] == [(1, "pair partner skipped"),
                                                                      (2, "image file missing")]


def test_an_incomplete_mmvp_pair_in_the_data_is_refused_before_answering(images, answerer):
    rows = mmvp_rows(missing_second=False)
    rows[3]["pair_id"] = 1
    with pytest.raises(ValueError, match=r"pair_id 1 has 3 rows \(.*line 1; .*line 2; .*line 4\)"):
        evaluate_benchmark("mmvp", answerer, write_rows(images / "mmvp.jsonl", rows))
    assert FixedAnswerer.calls == []


def test_limit_keeps_whole_pairs(images, answerer):
    data = write_rows(images / "mmvp.jsonl", mmvp_rows(missing_second=False))
    assert [r["pair_id"] for r in evaluate_benchmark("mmvp", answerer, data, limit=1).records] == [1, 1]
    assert len(evaluate_benchmark("mmvp", answerer, data, limit=3).records) == 4


def test_the_run_prints_and_saves_skips_per_reason(images, monkeypatch, capsys):
    monkeypatch.setattr(evaluation.answering, "ImageQuestionAnswerer", FixedAnswerer)
    (images / "model").mkdir()
    data = write_rows(images / "mmvp.jsonl", mmvp_rows())
    evaluate_main(["mmvp", "--model", str(images / "model"), "--data", str(data),
                   "--results-dir", str(images / "results")])
    printed = capsys.readouterr().out
    assert "2 (image file missing: 1, pair partner skipped: 1)" in printed
    saved = json.loads(next((images / "results" / "mmvp").glob("*/model-*.json")).read_text())
    assert saved["summary"]["skipped"] == {"image file missing": 1, "pair partner skipped": 1}
    assert saved["skipped_rows"][1] == {"file": str(data), "line": 2, "reason": "image file missing"}
