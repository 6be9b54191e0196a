"""Turns dataset rows into DEEM training batches through the processor."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

ASSISTANT_SPAN = re.compile(r"\n## ASSISTANT: ?(.*?)(</s>|$)", re.DOTALL)


@dataclass
class DeemDataCollator:
    """Rows → `input_ids`, `attention_mask`, `labels`, `pixel_values` (+ `decoder_pixel_values`, `image_masks`).

    A row has `text` (with `<image>` markers; every token is a target) or `messages` (a chat; only the
    assistant replies are targets), and optionally `images` and `masks` (one per image, or None).
    Random crops/flips are seeded from the batch's own content, `seed` and `epoch` (DeemTrainer keeps `epoch`
    current), never from the global RNG: a resumed run sees the same crops, and the global RNG (diffusion noise,
    timesteps, condition dropout) stays exactly where the checkpoint left it.
    """

    processor: Any
    decoder_views: bool = True
    train_augment: bool = True
    max_length: int | None = None
    seed: int = 0
    epoch: int = 0

    def augmentation_seed(self, texts: list[str], images: list[Any]) -> int:
        digest = hashlib.sha256(f"{self.seed}:{self.epoch}".encode())
        for text in texts:
            digest.update(text.encode())
        for image in images:
            digest.update(image.tobytes() if hasattr(image, "tobytes") else repr(image).encode())
        return int.from_bytes(digest.digest()[:4], "little")

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("Empty batch.")
        texts, images, masks, chat = [], [], [], []
        for index, row in enumerate(rows):
            if "messages" in row and row["messages"] is not None:
                texts.append(self.processor.apply_chat_template(row["messages"], tokenize=False))
                chat.append(True)
            elif "text" in row:
                texts.append(row["text"])
                chat.append(False)
            else:
                raise ValueError(f"Row {index} has neither 'text' nor 'messages'.")
            row_images = list(row.get("images") or [])
            row_masks = list(row.get("masks") or [None] * len(row_images))
            if len(row_masks) != len(row_images):
                raise ValueError(f"Row {index} has {len(row_images)} images but {len(row_masks)} masks.")
            images.extend(row_images)
            masks.extend(None if m is None else np.asarray(m) for m in row_masks)
        has_masks = any(m is not None for m in masks)
        seed = self.augmentation_seed(texts, images) if self.train_augment else None
        tokenizer_kwargs = {"padding": True, "padding_side": "right"}
        if self.max_length is not None:
            tokenizer_kwargs.update(truncation=True, max_length=self.max_length)
        batch = self.processor(
            text=texts, images=images or None, image_masks=masks if has_masks else None,
            return_decoder_views=self.decoder_views and bool(images), train=self.train_augment, seed=seed,
            return_offsets_mapping=any(chat), **tokenizer_kwargs,
        )
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        labels[batch["input_ids"] == self.processor.image_token_id] = -100
        offsets = batch.pop("offset_mapping", None)
        for row, is_chat in enumerate(chat):
            if is_chat:
                expanded = texts[row].replace(self.processor.image_marker, self.processor.image_slot)
                spans = [(m.start(1), m.end(2)) for m in ASSISTANT_SPAN.finditer(expanded)]
                # A token is a target when its characters overlap a reply (BPE tokens may carry the space before).
                keep = torch.tensor([e > s and any(s < b and e > a for a, b in spans)
                                     for s, e in offsets[row].tolist()])
                labels[row, ~keep] = -100
        batch["labels"] = labels
        return dict(batch)
