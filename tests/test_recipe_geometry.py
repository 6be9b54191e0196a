"""Each stage trains with Table 12's augmentation and input size: stage I centre crop, II/III the whole image,
no flip; encoder view, decoder view and region mask always share the geometry."""

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

from processing import DeemProcessor
from trainers import STAGES


def striped(width: int = 120, height: int = 60) -> tuple[Image.Image, np.ndarray]:
    """Grey image with a green stripe at the far left; the mask marks the stripe."""
    array = np.full((height, width, 3), 128, dtype=np.uint8)
    array[:, :10] = (0, 255, 0)
    mask = np.zeros((height, width), dtype=np.float32)
    mask[:, :10] = 1
    return Image.fromarray(array), mask


def views(stage: str, seed: int, **overrides):
    processor = STAGES[stage].configure_processor(DeemProcessor.from_pretrained(TINY), image_size=32, **overrides)
    image, mask = striped()
    return processor.image_processor(image, image_masks=[mask], return_decoder_views=True, train=True, seed=seed)


def green(view: torch.Tensor) -> torch.Tensor:
    """Columns where the view is green (works for CLIP-normalised and [-1, 1] views)."""
    return (view[1] > view[0] + 0.5).float().mean(0) > 0.5


def test_stage_one_takes_the_centre_square_every_time():
    first = views("stage1", seed=0)
    for seed in range(1, 6):  # no random crop, no flip: the same views whatever the seed
        other = views("stage1", seed=seed)
        for key in ("pixel_values", "decoder_pixel_values", "image_masks"):
            torch.testing.assert_close(other[key], first[key])
    assert not green(first["pixel_values"][0]).any()  # the stripe lies outside the centre square


@pytest.mark.parametrize("stage", ["stage2", "stage3"])
def test_later_stages_keep_the_whole_image_and_never_flip(stage):
    for seed in range(6):
        out = views(stage, seed=seed)
        encoder, decoder, mask = green(out["pixel_values"][0]), green(out["decoder_pixel_values"][0]), out["image_masks"][0]
        assert encoder[0] and not encoder[-1]  # the stripe stays at the left edge
        assert decoder[: len(decoder) // 8].any() and not decoder[-1]
        columns = mask.mean(0) > 0.5
        assert torch.equal(columns, encoder)  # the mask covers exactly the stripe in the encoder view


def test_a_flip_when_asked_moves_all_views_together():
    flipped = 0
    for seed in range(12):
        out = views("stage2", seed=seed, flip=True)
        encoder = green(out["pixel_values"][0])
        flipped += bool(encoder[-1])
        assert torch.equal(out["image_masks"][0].mean(0) > 0.5, encoder)
        decoder = green(out["decoder_pixel_values"][0])
        assert bool(decoder[-1]) == bool(encoder[-1])
    assert 0 < flipped < 12


def test_recipes_set_size_and_geometry_and_an_explicit_value_wins():
    processor = DeemProcessor.from_pretrained(TINY)
    STAGES["stage1"].configure_processor(processor)
    assert (processor.image_processor.size, processor.image_processor.crop, processor.image_processor.flip) == (
        256, "center", False)
    STAGES["stage2"].configure_processor(processor, image_size=64, crop="random")
    assert (processor.image_processor.size, processor.image_processor.crop) == (64, "random")
    with pytest.raises(ValueError, match="crop must be"):
        STAGES["stage2"].configure_processor(processor, image_size=128, crop="zoom")
    assert (processor.image_processor.size, processor.image_processor.crop) == (64, "random")  # left as it was
