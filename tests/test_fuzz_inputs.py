"""Fuzzing processor + tiny model: random texts, image types, sizes, masks, batches and padding sides.

Every case must end in a correct result (each image read as the PIL image it holds, one `pixel_values` row per
slot in slot order, finite logits of shape (batch, seq, vocab)) or in the ValueError/TypeError that the case's
own defect calls for. Deterministic (derandomize) and bounded to a few seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from modeling_deem import DeemForConditionalGeneration
from modeling_deem.tiny import tiny_config

CHANNEL_COUNTS = (1, 3, 4)


def _grey(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0]


def _rgba(rgb: np.ndarray) -> np.ndarray:
    return np.concatenate([rgb, rgb[..., 1:2] // 2], axis=2)


def _pil_grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _via_pil(rgb: np.ndarray, mode: str) -> tuple[Image.Image, np.ndarray]:
    image = Image.fromarray(rgb).convert(mode)
    return image, np.asarray(image.convert("RGB"))


# Each valid kind: base RGB uint8 (H, W, 3) → (the input, the RGB uint8 pixels it must read as, its layout).
# Layout "hwc"/"chw" marks 3-D arrays whose channel axis the reader infers; "known" needs no inference.
VALID: dict[str, Callable[[np.ndarray], tuple[Any, np.ndarray, str]]] = {
    "pil_rgb": lambda x: (Image.fromarray(x), x, "known"),
    "pil_rgba": lambda x: (Image.fromarray(_rgba(x)), x, "known"),
    "pil_L": lambda x: (Image.fromarray(_grey(x)), _pil_grey_to_rgb(_grey(x)), "known"),
    "pil_LA": lambda x: (*_via_pil(x, "LA"), "known"),
    "pil_P": lambda x: (*_via_pil(x, "P"), "known"),
    "pil_CMYK": lambda x: (*_via_pil(x, "CMYK"), "known"),
    "pil_1": lambda x: (Image.fromarray(_grey(x) > 127), _pil_grey_to_rgb((_grey(x) > 127) * np.uint8(255)),
                        "known"),
    "pil_I;16": lambda x: (Image.fromarray(_grey(x).astype(np.uint16) * 257), _pil_grey_to_rgb(_grey(x)), "known"),
    "pil_I": lambda x: (Image.fromarray(_grey(x).astype(np.int32) * 257), _pil_grey_to_rgb(_grey(x)), "known"),
    "pil_F": lambda x: (Image.fromarray(_grey(x).astype(np.float32)), _pil_grey_to_rgb(_grey(x)), "known"),
    "np_hwc_u8": lambda x: (x, x, "hwc"),
    "np_chw_u8": lambda x: (x.transpose(2, 0, 1), x, "chw"),
    "np_hw_u8": lambda x: (_grey(x), _pil_grey_to_rgb(_grey(x)), "known"),
    "np_hw1_u8": lambda x: (_grey(x)[..., None], _pil_grey_to_rgb(_grey(x)), "hwc"),
    "np_hwc_rgba": lambda x: (_rgba(x), x, "hwc"),
    "np_u16": lambda x: (x.astype(np.uint16) * 257, x, "hwc"),
    "np_f01": lambda x: (x.astype(np.float32) / 255, x, "hwc"),
    "np_f255": lambda x: (x.astype(np.float64), x, "hwc"),
    "np_bool": lambda x: (_grey(x) > 127, _pil_grey_to_rgb((_grey(x) > 127) * np.uint8(255)), "known"),
    "np_int64": lambda x: (x.astype(np.int64), x, "hwc"),
    "torch_chw_u8": lambda x: (torch.from_numpy(x).permute(2, 0, 1), x, "chw"),
    "torch_hwc_u8": lambda x: (torch.from_numpy(x), x, "hwc"),
    "torch_hw_u8": lambda x: (torch.from_numpy(_grey(x)), _pil_grey_to_rgb(_grey(x)), "known"),
    "torch_chw_f01": lambda x: (torch.from_numpy(x).permute(2, 0, 1).float() / 255, x, "chw"),
    "torch_chw_f16_255": lambda x: (torch.from_numpy(x).permute(2, 0, 1).half(), x, "chw"),
}

KINDS = sorted(VALID)

# Each invalid kind: (the input, a regex its error must match, the error type).
INVALID: dict[str, tuple[Any, str, type[Exception]]] = {
    "nan": (np.full((6, 7, 3), np.nan, np.float32), r"shape \(6, 7, 3\) .*NaN or infinite", ValueError),
    "negative": (np.full((6, 7), -0.5), r"Negative pixel values.*float64", ValueError),
    "above_255": (np.full((6, 7, 3), 300.0, np.float32), r"above 255.*float32", ValueError),
    "batch_4d": (np.zeros((2, 6, 7, 3), np.uint8), r"shape \(2, 6, 7, 3\).*list of images", ValueError),
    "empty": (np.zeros((0, 7, 3), np.uint8), r"Empty image.*shape \(0, 7, 3\)", ValueError),
    "two_channels": (np.zeros((6, 7, 2), np.uint8), r"No channel axis.*shape \(6, 7, 2\)", ValueError),
    "object": (np.zeros((6, 7), object), r"dtype object", TypeError),
    "path": ("picture.png", r"Cannot load the image 'picture\.png'", ValueError),
    "huge_ints": (torch.full((6, 7), 70000), r"up to 70000.*torch\.int64", ValueError),
}


INVALID_KINDS = sorted(INVALID)


@dataclass
class Case:
    texts: list[str]
    kinds: list[list[str]]  # per text, per slot
    sizes: list[list[tuple[int, int]]]
    seeds: list[list[int]]
    masks: bool
    nested: bool
    broken: tuple[int, str] | None  # (flat image index, invalid kind)
    moved: bool  # in nested form, one image moved to the next text
    padding_side: str


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Hypothesis draws the structure; a per-case seed picks kinds, sizes and defects, evenly over all kinds
    (hypothesis' own draws favour the first and smallest choices)."""
    batch = draw(st.integers(1, 3))
    words = st.lists(st.sampled_from(["a", "cat", "on", "the", "mat", "What", "is", "this?", "\n"]), max_size=5)
    slots = [draw(st.integers(0, 4)) for _ in range(batch)]
    texts = ["<image>".join(" ".join(draw(words)) for _ in range(count + 1)) for count in slots]
    nested, masks, padding_side = draw(st.booleans()), draw(st.booleans()), draw(st.sampled_from(["left", "right"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kinds = [[KINDS[int(rng.integers(len(KINDS)))] for _ in range(count)] for count in slots]
    side = lambda: int(rng.integers(1, 5) if rng.random() < 0.025 else rng.integers(5, 41))  # noqa: E731
    sizes = [[(side(), side()) for _ in range(count)] for count in slots]
    seeds = [[int(rng.integers(2**16)) for _ in range(count)] for count in slots]
    total = sum(slots)
    broken = None
    if total and rng.random() < 0.2:
        broken = (int(rng.integers(total)), INVALID_KINDS[int(rng.integers(len(INVALID_KINDS)))])
    moved = nested and batch > 1 and total > 0 and bool(rng.random() < 0.2)
    return Case(texts, kinds, sizes, seeds, masks, nested, broken, moved, padding_side)


def _covering_cases() -> list[Case]:
    """Explicit examples that read every valid kind at least once, whatever hypothesis draws."""
    covering = []
    for start in range(0, len(KINDS), 12):
        chunk = KINDS[start : start + 12]
        rows = [chunk[i : i + 4] for i in range(0, len(chunk), 4)]
        texts = ["Look " + " and ".join(["<image>"] * len(row)) for row in rows]
        sizes = [[(9 + i, 14 + i) for i in range(len(row))] for row in rows]
        seeds = [[start + 4 * r + i for i in range(len(row))] for r, row in enumerate(rows)]
        even = start % 24 == 0
        covering.append(Case(texts, rows, sizes, seeds, True, even, None, False, "left" if even else "right"))
    return covering


def _with_covering_examples(test: Callable) -> Callable:
    for case in _covering_cases():
        test = example(case=case)(test)
    return test


def _base_image(size: tuple[int, int], seed: int) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    rgb[0, 0] = 255  # a white pixel, so float and int copies are on an unambiguous scale
    return rgb


def _ambiguous(image: Any, layout: str) -> bool:
    return layout != "known" and image.shape[0] in CHANNEL_COUNTS and image.shape[-1] in CHANNEL_COUNTS


class Tiny:
    """The tiny processor and model, built once; a short repr keeps hypothesis' reports readable."""

    def __init__(self, processor: Any, model: DeemForConditionalGeneration) -> None:
        self.processor, self.model = processor, model

    def __repr__(self) -> str:
        return "Tiny(processor, model)"


@pytest.fixture(scope="module")
def tiny(processor) -> Iterator[Tiny]:
    """One thread: a tiny model gains nothing from more, and on a busy machine they cost 20x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield Tiny(processor, DeemForConditionalGeneration(tiny_config()).eval())
    torch.set_num_threads(threads)


@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases())
@_with_covering_examples
def test_fuzz_processor_and_forward(tiny, case):
    processor, model = tiny.processor, tiny.model
    images, references, masks, expected = [], [], [], None
    for row_kinds, row_sizes, row_seeds in zip(case.kinds, case.sizes, case.seeds):
        row_images, row_masks = [], []
        for kind, size, seed in zip(row_kinds, row_sizes, row_seeds):
            index = len(references)
            if case.broken and case.broken[0] == index:
                image, message, error = INVALID[case.broken[1]]
                reference = None
                expected = expected or (error, rf"^Image {index}: .*{message}", case.broken[1])
            else:
                image, reference, layout = VALID[kind](_base_image(size, seed))
                if _ambiguous(image, layout):
                    expected = expected or (ValueError, rf"^Image {index}: Ambiguous channel axis", "ambiguous")
            references.append(reference)
            row_images.append(image)
            mask = np.random.default_rng(seed).random(size) > 0.5 if case.masks and seed % 2 else None
            row_masks.append(mask)
        images.append(row_images)
        masks.append(row_masks)
    if case.moved:
        row = next(r for r, row_images in enumerate(images) if row_images)
        target = (row + 1) % len(images)
        images[target].append(images[row].pop())
        masks[target].append(masks[row].pop())
        first = min(row, target)
        expected = (ValueError, rf"Text {first} has \d+ image slots \('<image>'\) but \d+ images were given", "moved")
    if not case.nested:
        images = [image for row in images for image in row]
        masks = [mask for row in masks for mask in row]

    def run() -> dict[str, torch.Tensor]:
        return processor(text=case.texts, images=images, image_masks=masks if case.masks else None,
                         padding=True, padding_side=case.padding_side)

    if expected is not None:  # see the mix with pytest --hypothesis-show-statistics
        event(f"refused: {expected[2]}")
        with pytest.raises(expected[0], match=expected[1]):
            run()
        return
    event(f"read {sum(len(k) for k in case.kinds)} images")
    out = run()
    slots = [len(k) for k in case.kinds]
    ids = out["input_ids"]
    assert ids.shape[0] == len(case.texts)
    per_row = (ids == processor.image_token_id).sum(dim=1).tolist()
    assert per_row == [processor.num_image_tokens * n for n in slots]
    assert (out["attention_mask"][:, -1 if case.padding_side == "left" else 0] == 1).all()
    if not sum(slots):
        assert "pixel_values" not in out
    else:
        size = processor.image_processor.size
        assert out["pixel_values"].shape == (sum(slots), 3, size, size)
        expected_pixels = processor.image_processor([Image.fromarray(r) for r in references])["pixel_values"]
        torch.testing.assert_close(out["pixel_values"], expected_pixels, atol=1e-4, rtol=0)
        if case.masks:
            assert out["image_masks"].shape == (sum(slots), size, size)
    with torch.no_grad():
        result = model(**{k: v for k, v in out.items() if k in ("input_ids", "attention_mask", "pixel_values",
                                                                   "image_masks")})
    assert result.logits.shape == (*ids.shape, model.config.text_config.vocab_size)
    assert torch.isfinite(result.logits).all()
