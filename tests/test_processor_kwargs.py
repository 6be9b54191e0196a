"""transformers' processor keyword arguments on DeemProcessor / DeemImageProcessor (issue 11): flat or structured
(`text_kwargs`, `images_kwargs`, `common_kwargs`), image options at construction (saved) and per call, and
`model_input_names` listing exactly what a normal call returns."""

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

from processing import DeemDiffusionProcessor, DeemImageProcessor, DeemProcessor

RGB = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
RGB[0, 0] = 255


@pytest.fixture
def image() -> Image.Image:
    return Image.fromarray(RGB)


def test_structured_text_and_images_kwargs_are_used(processor, image):
    out = processor(text="Look: <image>", images=image, text_kwargs={"padding": "max_length", "max_length": 120},
                    images_kwargs={"size": 32}, common_kwargs={"return_tensors": "np"})
    assert isinstance(out["input_ids"], np.ndarray) and out["input_ids"].shape == (1, 120)
    assert out["pixel_values"].shape == (1, 3, 32, 32)


def test_a_kwarg_given_flat_and_structured_is_refused(processor, image):
    with pytest.raises(ValueError, match="do_rescale was passed two times"):
        processor(text="<image>", images=image, images_kwargs={"do_rescale": True}, do_rescale=True)


def test_unknown_kwargs_are_refused(processor, image):
    with pytest.raises(TypeError, match="unexpected arguments: bogus"):
        processor(text="<image>", images=image, bogus=1)
    with pytest.raises(TypeError, match="DeemImageProcessor got unexpected arguments: bogus"):
        processor.image_processor(image, bogus=1)


def test_do_rescale_false_takes_unit_floats_as_they_are(processor, image):
    expected = processor(text="<image>", images=image)["pixel_values"]
    floats = RGB.astype(np.float32) / 255
    for kwargs in ({"do_rescale": False}, {"images_kwargs": {"do_rescale": False}}):
        torch.testing.assert_close(processor(text="<image>", images=floats, **kwargs)["pixel_values"], expected)


def test_do_rescale_false_refuses_values_outside_0_1(processor, image):
    with pytest.raises(ValueError, match=r"do_rescale=False says the pixels are already in \[0, 1\], but they span "
                                         r"\[0, 255\]: got a PIL image"):
        processor(text="<image>", images=image, do_rescale=False)


def test_another_rescale_factor_is_applied_literally(processor):
    """Not the default 1/255: `values * rescale_factor`, as in transformers (no scale detection)."""
    half = processor(text="<image>", images=RGB, rescale_factor=0.5 / 255, do_normalize=False)["pixel_values"]
    expected = processor(text="<image>", images=RGB.astype(np.float32) * (0.5 / 255), do_rescale=False,
                         do_normalize=False)["pixel_values"]
    torch.testing.assert_close(half, expected)


def test_image_options_at_construction_are_saved_and_used(tmp_path, image):
    image_processor = DeemImageProcessor(size=32, decoder_size=16, do_normalize=False, rescale_factor=0.5 / 255)
    image_processor.save_pretrained(tmp_path)
    loaded = DeemImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == image_processor.to_dict()
    assert (loaded.size, loaded.do_rescale, loaded.rescale_factor, loaded.do_normalize) == (32, True, 0.5 / 255, False)
    halved = RGB.astype(np.float32) * (0.5 / 255)
    torch.testing.assert_close(loaded(image)["pixel_values"], loaded(halved, do_rescale=False)["pixel_values"])
    assert loaded(image)["pixel_values"].shape == (1, 3, 32, 32)
    # A call's own options win over the saved ones.
    normalised = loaded(image, do_normalize=True, rescale_factor=1 / 255, image_mean=0.5, image_std=0.5)["pixel_values"]
    torch.testing.assert_close(normalised, (loaded(image, rescale_factor=1 / 255)["pixel_values"] - 0.5) / 0.5)


def test_size_per_call_must_be_square(processor, image):
    assert processor(text="<image>", images=image, size={"height": 48, "width": 48})["pixel_values"].shape[-1] == 48
    with pytest.raises(ValueError, match="DEEM's views are square"):
        processor(text="<image>", images=image, size={"height": 48, "width": 32})


@pytest.mark.parametrize("option, value, message", [
    ("crop_size", {"height": 8, "width": 8}, "does not take crop_size"),
    ("resample", 2, "does not take resample"),
    ("do_pad", True, "does not take do_pad"),
    ("do_convert_rgb", False, "cannot follow do_convert_rgb=False"),
    ("do_resize", False, "cannot follow do_resize=False"),
])
def test_standard_image_options_deem_cannot_follow_are_refused(processor, image, option, value, message):
    with pytest.raises(ValueError, match=message):
        processor(text="<image>", images=image, **{option: value})
    with pytest.raises(ValueError, match=message):
        DeemImageProcessor(**{option: value})


def test_training_options_route_to_the_image_processor(processor, image):
    flat = processor(text="<image>", images=image, train=True, seed=3, return_decoder_views=True)
    nested = processor(text="<image>", images=image,
                       images_kwargs={"train": True, "seed": 3, "return_decoder_views": True})
    torch.testing.assert_close(flat["decoder_pixel_values"], nested["decoder_pixel_values"])
    torch.testing.assert_close(flat["pixel_values"], nested["pixel_values"])


def test_apply_chat_template_forwards_processor_kwargs(processor, image):
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}]}]
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        processor_kwargs={"padding": "max_length", "max_length": 150, "size": 32,
                                                          "do_rescale": True, "return_mm_token_type_ids": True})
    assert out["input_ids"].shape == (1, 150) and out["pixel_values"].shape == (1, 3, 32, 32)
    assert int(out["mm_token_type_ids"].sum()) == 1 + processor.num_image_tokens


def test_model_input_names_are_what_a_normal_call_returns(processor, image):
    assert set(processor(text="<image>", images=image).keys()) == set(processor.model_input_names)
    assert "image_masks" not in processor.model_input_names
    with_options = processor(text="<image>", images=image, image_masks=[np.ones((30, 40))], return_decoder_views=True)
    assert set(with_options.keys()) - set(processor.model_input_names) == {"image_masks", "decoder_pixel_values"}


def test_diffusion_processor_model_input_names_are_what_a_normal_call_returns(processor, image):
    condition_tokenizer = DeemProcessor.from_pretrained(TINY).tokenizer  # stands in for the SD text encoder's
    condition_tokenizer.model_max_length = 16
    diffusion = DeemDiffusionProcessor(processor.image_processor, processor.tokenizer, condition_tokenizer)
    assert set(diffusion(text="<image> a cat", images=image).keys()) == set(diffusion.model_input_names)


def test_images_without_text_give_the_image_outputs(processor, image):
    out = processor(images=[image, image], return_decoder_views=True)
    assert set(out.keys()) == {"pixel_values", "decoder_pixel_values"}
    torch.testing.assert_close(out["pixel_values"], processor.image_processor([image, image])["pixel_values"])
    with pytest.raises(ValueError, match="needs text .*, images, or both"):
        processor()
