"""Images reach models as 8-bit RGB (16-bit ones scaled, not clipped white) and a broken image names its file."""

import json

import numpy as np
import pytest
from PIL import Image

from evaluation.answering import ImageQuestionAnswerer, Question
from evaluation.benchmarks import evaluate_benchmark
from evaluation.images import open_image, to_rgb
from evaluation.vlm_matching import evaluate_mmvp_vlm, evaluate_winoground

GRADIENT = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)  # 0 .. 65520


def sixteen_bit_png(path):
    Image.fromarray(GRADIENT).save(path)
    assert Image.open(path).mode == "I;16"
    return path


def truncated_jpeg(path):
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:400])
    return path


def assert_scaled(image):
    assert image.mode == "RGB"
    values = np.asarray(image)[..., 0].astype(int)
    assert np.array_equal(values, GRADIENT.astype(int) >> 8)  # not 99.6% white


class RecordingAnswerer(ImageQuestionAnswerer):
    """The real answering loop with the model replaced by a recorder of the images it is handed."""

    def __init__(self):
        self.batch_size, self.images = 4, []

    def answer_batch(self, images, questions, image_keys=None, cache=None):
        self.images.extend(images)
        return ["yes"] * len(questions)


def test_a_16_bit_png_reaches_the_model_scaled_to_8_bits(tmp_path):
    answerer = RecordingAnswerer()
    answerer.answer([Question(0, str(sixteen_bit_png(tmp_path / "deep.png")), "Is it dark?")], show_progress=False)
    assert_scaled(answerer.images[0])
    assert_scaled(open_image(tmp_path / "deep.png"))
    assert_scaled(to_rgb(Image.fromarray(GRADIENT.astype(np.int32))))  # mode "I", as some 16-bit files open
    assert np.asarray(to_rgb(Image.new("L", (2, 2), 77))).tolist() == [[[77] * 3] * 2] * 2


def test_matching_benchmarks_scale_16_bit_images_too(tmp_path):
    seen = []

    def scorer(image, texts):
        seen.append(image)
        return [0.0] * len(texts)

    path = sixteen_bit_png(tmp_path / "deep.png")
    evaluate_mmvp_vlm([{"pattern": "p", "ids": [1, 2], "images": [path, path], "texts": ["a", "b"]}], scorer)
    evaluate_winoground([{"image_0": "deep.png", "image_1": Image.open(path), "caption_0": "a", "caption_1": "b"}],
                        scorer, tmp_path)
    assert len(seen) == 4
    for image in seen:
        assert_scaled(image)


def test_a_truncated_jpeg_names_its_file_wherever_it_is_opened(tmp_path):
    broken = truncated_jpeg(tmp_path / "broken.jpg")
    with pytest.raises(ValueError, match=r"Cannot read image .*broken\.jpg"):
        open_image(broken)
    with pytest.raises(ValueError, match=r"broken\.jpg"):
        RecordingAnswerer().answer([Question(0, str(broken), "Is it red?")], show_progress=False)
    with pytest.raises(ValueError, match=r"broken\.jpg"):
        evaluate_winoground([{"image_0": "broken.jpg", "image_1": "broken.jpg", "caption_0": "a", "caption_1": "b"}],
                            lambda image, texts: [0.0, 0.0], tmp_path)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"Cannot read image .*text\.png"):
        open_image(tmp_path / "text.png")
    with pytest.raises(FileNotFoundError, match=r"Missing image .*absent\.png"):
        open_image(tmp_path / "absent.png")


def test_a_broken_image_is_refused_before_any_answering_with_row_and_file(tmp_path):
    truncated_jpeg(tmp_path / "broken.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "fine.png")
    data = tmp_path / "pope.jsonl"
    data.write_text("\n".join(json.dumps({"image": name, "object": "cat", "label": "yes"})
                              for name in ("fine.png", "broken.jpg")))
    answerer = RecordingAnswerer()
    with pytest.raises(ValueError, match=r"pope\.jsonl, line 2: Cannot read image .*broken\.jpg"):
        evaluate_benchmark("pope", answerer, data)
    assert answerer.images == []


@pytest.mark.parametrize("values", [
    np.arange(256, dtype=np.int32).reshape(16, 16),  # mode "I" holding 8-bit values (regression: `>> 8` made it black)
    GRADIENT.astype(np.int32),  # mode "I" holding 16-bit values
    GRADIENT,  # I;16
    np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8),  # F in [0, 1]
    np.linspace(0, 255, 64, dtype=np.float32).reshape(8, 8),  # F in 0-255
])
def test_wide_modes_are_read_as_the_processor_reads_them(tmp_path, values):
    from processing.image_inputs_deem import to_rgb_tensor

    image = Image.fromarray(values)
    ours = np.asarray(to_rgb(image)).astype(int)
    processor = np.rint(to_rgb_tensor(image).numpy().transpose(1, 2, 0) * 255).astype(int)
    assert np.abs(ours - processor).max() <= 1  # 16-bit: value >> 8 against the processor's value / 257
    if image.mode == "I" and values.max() <= 255:
        assert np.array_equal(ours[..., 0], values) and np.array_equal(ours, processor)
        path = tmp_path / "eight-bit-in-I.tif"
        image.save(path)
        assert Image.open(path).mode == "I"
        assert np.array_equal(np.asarray(open_image(path))[..., 0], values)


@pytest.mark.parametrize("values", [np.array([[-1, 5]], dtype=np.int32), np.array([[0, 70000]], dtype=np.int32),
                                    np.array([[0, 300.0]], dtype=np.float32)])
def test_wide_mode_values_the_processor_refuses_are_refused(values):
    with pytest.raises(ValueError, match="mode"):
        to_rgb(Image.fromarray(values))
