"""Row builders for the paper's data kinds, producing the collator's row format
(`text` or `messages`, `images`, `masks`): interleaved documents (MMC4-like), image–text pairs
(LAION/CC/SBU-like), LLaVA conversations and region instructions (RLE, polygon or binary masks)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# The `datasets` builder for each data-file extension the training scripts read.
DATA_FILE_KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

IMAGE = "<image>"


def interleaved_document_row(
    texts: list[str],
    image_info: list[dict[str, Any]],
    rng: random.Random,
    max_images: int = 6,
    similarity_threshold: float | None = 0.24,
) -> dict[str, Any]:
    """An MMC4-like document: `texts` are its sentences; each of `image_info` has `image`,
    `matched_text_index` and optionally `matched_sim`. Images scored below the threshold are dropped, at most
    `max_images` are kept (in document order), and each goes before or after its sentence with p = 0.5."""
    kept = []
    for info in image_info:
        if "image" not in info or info["image"] is None:
            raise ValueError("An image entry has no image.")
        index = info.get("matched_text_index")
        if index is None or not 0 <= index < len(texts):
            raise ValueError(f"matched_text_index {index} is outside the document's {len(texts)} sentences.")
        score = info.get("matched_sim")
        if similarity_threshold is not None and score is not None and score < similarity_threshold:
            continue
        kept.append(info)
    kept = sorted(kept, key=lambda info: info["matched_text_index"])[:max_images]
    before: dict[int, list[Any]] = {}
    after: dict[int, list[Any]] = {}
    for info in kept:
        side = before if rng.random() < 0.5 else after
        side.setdefault(info["matched_text_index"], []).append(info["image"])
    pieces, images = [], []
    for index, sentence in enumerate(texts):
        for image in before.get(index, []):
            pieces.append(IMAGE)
            images.append(image)
        pieces.append(sentence)
        for image in after.get(index, []):
            pieces.append(IMAGE)
            images.append(image)
    return {"text": " ".join(pieces), "images": images}


def image_text_pair_row(image: Any, caption: str, rng: random.Random) -> dict[str, Any]:
    """A LAION/CC/SBU-like pair: image then caption, or caption then image (a NIP target), p = 0.5."""
    if not caption or not caption.strip():
        raise ValueError("Empty caption.")
    text = f"{IMAGE} {caption}" if rng.random() < 0.5 else f"{caption} {IMAGE}"
    return {"text": text, "images": [image]}


def llava_conversation_row(conversations: list[dict[str, str]], image: Any = None) -> dict[str, Any]:
    """A LLaVA-format sample (`from`: human/gpt, `value` with an optional `<image>`) → chat `messages`."""
    roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
    messages = []
    for turn in conversations:
        if turn.get("from") not in roles:
            raise ValueError(f"Unknown conversation role {turn.get('from')!r}.")
        messages.append({"role": roles[turn["from"]], "content": turn["value"].replace("<image>\n", "<image>")})
    markers = sum(m["content"].count(IMAGE) for m in messages)
    if markers != (1 if image is not None else 0):
        raise ValueError(f"The conversation has {markers} '<image>' markers but {int(image is not None)} images.")
    return {"messages": messages, "images": [image] if image is not None else []}


def region_instruction_row(image: Image.Image, mask: Any, question: str, answer: str) -> dict[str, Any]:
    """A region instruction: the whole image, then the region as a second slot carrying its mask
    (the paper's `{image} ... <ref>region1</ref> {mask}`). `mask`: binary array, COCO RLE or polygon."""
    width, height = image.size
    binary = decode_mask(mask, height, width)
    return {
        "messages": [{"role": "user", "content": f"{IMAGE} {question} <ref>region1</ref> {IMAGE}"},
                     {"role": "assistant", "content": answer}],
        "images": [image, image],
        "masks": [None, binary],
    }


def decode_mask(mask: Any, height: int, width: int) -> np.ndarray:
    """Binary (H, W) array from a binary array, a COCO RLE dict (`counts` list or compressed string) or a
    polygon (flat `[x1, y1, x2, y2, ...]` or a list of them)."""
    if isinstance(mask, dict):
        size = mask.get("size")
        if size is not None and tuple(size) != (height, width):
            raise ValueError(f"RLE size {tuple(size)} does not match the image ({height}, {width}).")
        counts = mask["counts"]
        counts = _decode_rle_string(counts) if isinstance(counts, (str, bytes)) else list(counts)
        flat = np.zeros(height * width, dtype=np.uint8)
        position, value = 0, 0
        for run in counts:
            flat[position : position + run] = value
            position += run
            value = 1 - value
        if position != height * width:
            raise ValueError(f"RLE covers {position} pixels, the image has {height * width}.")
        return flat.reshape(width, height).T  # COCO RLE is column-major
    if isinstance(mask, (list, tuple)) and mask and isinstance(mask[0], (int, float)):
        mask = [mask]
    if isinstance(mask, (list, tuple)) and mask and isinstance(mask[0], (list, tuple)):
        canvas = Image.new("L", (width, height), 0)
        for polygon in mask:
            if len(polygon) < 6 or len(polygon) % 2:
                raise ValueError(f"A polygon needs at least 3 (x, y) points, got {len(polygon)} numbers.")
            ImageDraw.Draw(canvas).polygon([(polygon[i], polygon[i + 1]) for i in range(0, len(polygon), 2)], fill=1)
        return np.asarray(canvas, dtype=np.uint8)
    array = np.asarray(mask)
    if array.shape != (height, width):
        raise ValueError(f"Mask shape {array.shape} does not match the image ({height}, {width}).")
    return (array > 0).astype(np.uint8)


def _decode_rle_string(encoded: str | bytes) -> list[int]:
    """COCO's compressed RLE string (6-bit chunks, deltas after the second count) → run lengths."""
    data = encoded.decode() if isinstance(encoded, bytes) else encoded
    counts: list[int] = []
    position = 0
    while position < len(data):
        value, shift, more = 0, 0, True
        while more:
            chunk = ord(data[position]) - 48
            value |= (chunk & 0x1F) << (5 * shift)
            more = bool(chunk & 0x20)
            position += 1
            shift += 1
            if not more and chunk & 0x10:
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts
