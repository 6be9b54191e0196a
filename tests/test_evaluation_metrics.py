"""Answer parsing and benchmark formulas on hand-computed cases."""

import pytest

from evaluation import mmvp_pair_accuracy, normalize_vqa_answer, parse_yes_no, pope_metrics, vqa_soft_accuracy
from evaluation.metrics import caption_metrics, yes_no_accuracy


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"), ("yes.", "yes"), ("YES, it is.", "yes"), ("No", "no"), ("no!", "no"), ("Nope.", "no"),
    ("No, there is not.", "no"), ("There is no dog in the image.", "no"), ("There is not a cat.", "no"),
    ("I don't see a cat.", "no"), ("The answer is yes", "yes"), ("There is a cat on the mat.", "yes"),
    ("  \n", None), ("...", None), ("banana", None), ("Not really", "no"), ("Yes, but no tail.", "yes"),
    ("It isn’t there", "no"),
])
def test_yes_no_parsing(text, expected):
    assert parse_yes_no(text) == expected


def test_vqa_normalisation_and_soft_accuracy():
    assert normalize_vqa_answer("Two dogs!") == "2 dogs"
    assert normalize_vqa_answer("The Cat.") == "cat"
    assert normalize_vqa_answer("dont") == "don't"
    assert normalize_vqa_answer("3.5") == "3.5"
    # 10 answers: "2" given by 2 humans. Leaving out one of them: 1/3; leaving out another: 2/3 (8 subsets).
    answers = ["2", "two", "3", "3", "3", "3", "3", "3", "3", "3"]
    assert vqa_soft_accuracy("2", answers) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_soft_accuracy("3", answers) == pytest.approx(1.0)
    assert vqa_soft_accuracy("4", answers) == 0.0
    with pytest.raises(ValueError, match="human answers"):
        vqa_soft_accuracy("2", [])


def test_pope_metrics_by_hand():
    predictions = ["yes", "yes", "no", None, "yes", "no"]
    labels = ["yes", "no", "no", "yes", "yes", "yes"]
    # tp=2 (0, 4), fp=1 (1), fn=2 (3, 5), correct = 0, 2, 4 → 3/6.
    scores = pope_metrics(predictions, labels)
    assert scores["accuracy"] == pytest.approx(0.5)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert scores["yes_ratio"] == pytest.approx(0.5)
    assert yes_no_accuracy(["yes", None], ["yes", "no"]) == 0.5
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        pope_metrics(["yes", "no"], ["yes", "no", "no"])


def test_mmvp_counts_a_pair_only_if_both_are_right():
    assert mmvp_pair_accuracy([True, True, True, False, False, False], [1, 1, 2, 2, 3, 3]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="exactly two questions"):
        mmvp_pair_accuracy([True, True, True], [1, 1, 2])


def test_caption_metrics_with_pycocoevalcap():
    perfect = caption_metrics({"1": "a red square", "2": "a blue circle"},
                              {"1": ["a red square"], "2": ["a blue circle"]})
    worse = caption_metrics({"1": "a green thing", "2": "a blue circle"},
                            {"1": ["a red square"], "2": ["a blue circle"]})
    assert perfect["bleu_1"] == pytest.approx(1.0) and worse["bleu_1"] < 1.0
    assert perfect["cider"] > worse["cider"] and 0 < perfect["meteor"] <= 1
    with pytest.raises(ValueError, match="No prediction for 1 images"):
        caption_metrics({"1": "x"}, {"1": ["x"], "2": ["y"]})
