"""Batches mix several images' questions, DEEM encodes each image once, and answers do not depend on the batch."""

import pytest
import torch
from PIL import Image
from test_evaluation_runs import models  # noqa: F401  (the tiny DEEM and tiny LLaVA folders)

from evaluation.answering import ImageQuestionAnswerer, Question

OBJECTS = ["cat", "traffic light", "dog", "dining table", "person", "umbrella"]


def sharpen(model):
    """Weights drawn wider than the tiny models' init, so that answers differ from question to question and a
    row mixed up with another, or read through its padding, would show."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 0.1)


@pytest.fixture(scope="module")
def pope_like(tmp_path_factory):
    """4 images, 1 to 6 questions each, of different lengths (so rows are left-padded)."""
    root = tmp_path_factory.mktemp("pope_like")
    questions = []
    for image_index, count in enumerate([6, 1, 5, 4]):
        path = root / f"{image_index}.png"
        Image.new("RGB", (48, 36), (60 * image_index, 200 - 40 * image_index, 90)).save(path)
        for name in OBJECTS[:count]:
            questions.append(Question(len(questions), str(path),
                                      f"Is there a {name} in the image? Please answer yes or no."))
    return questions


@pytest.mark.parametrize("name", ["deem-tiny", "llava-tiny"])
def test_answers_do_not_depend_on_the_batch_size(models, pope_like, name):  # noqa: F811
    answerer = ImageQuestionAnswerer(models / name, max_new_tokens=6, task="pope")
    sharpen(answerer.model)
    answers = {}
    for batch_size in (1, 3, 8):
        answerer.batch_size = batch_size
        answers[batch_size] = answerer.answer(pope_like, show_progress=False)
    assert answers[1] == answers[3] == answers[8]
    assert len(answers[1]) == len(pope_like) and len(set(answers[1].values())) > 4  # the rows differ


def test_deem_encodes_each_image_once_across_batches(models, pope_like):  # noqa: F811
    answerer = ImageQuestionAnswerer(models / "deem-tiny", max_new_tokens=4, task="pope", batch_size=3)
    encoded = []
    hook = answerer.model.vision_tower.register_forward_hook(lambda m, i, o: encoded.append(i[0].shape[0]))
    try:
        reused = answerer.answer(pope_like, show_progress=False)
        assert sum(encoded) == 4  # 16 questions, 4 images, batches of 3 spanning images
        encoded.clear()
        answerer.reuses_image_features = False
        assert answerer.answer(pope_like, show_progress=False) == reused
        assert sum(encoded) == len(pope_like)
    finally:
        hook.remove()


def test_a_mixed_batch_matches_each_question_alone(models, pope_like):  # noqa: F811
    answerer = ImageQuestionAnswerer(models / "deem-tiny", max_new_tokens=5, task="pope")
    sharpen(answerer.model)
    images = {q.image: Image.open(q.image).convert("RGB") for q in pope_like}
    rows = pope_like[4:12]  # the end of image 0, image 1, most of image 2
    together = answerer.answer_batch([images[q.image] for q in rows], [q.text for q in rows])
    alone = [answerer.answer_batch([images[q.image]], [q.text])[0] for q in rows]
    assert together == alone and len(set(together)) > 2
