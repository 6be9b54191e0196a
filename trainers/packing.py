"""Packing: several samples in one sequence, with no attention across their boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .collator import DeemDataCollator

# Batch entries with one row per image (not per sequence): concatenated in image order.
PER_IMAGE_KEYS = ("pixel_values", "decoder_pixel_values", "image_masks", "diffusion_pixel_values",
                  "condition_input_ids", "condition_attention_mask")


@dataclass
class DeemPackingCollator:
    """Collates each row with `DeemDataCollator`, then packs consecutive rows greedily into sequences of at most
    `max_length` tokens. Each packed sequence gets a block-diagonal causal mask `(B, 1, L, L)` and position ids
    that restart per sample, so a packed sample computes exactly what it would alone; the first token of each
    sample is never a target of the previous one. Each sample keeps its own BOS, which is where DEEM's NIP
    context starts, so the first-image rule holds per sample."""

    collator: DeemDataCollator
    max_length: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        samples = [self.collator([row]) for row in rows]
        for index, sample in enumerate(samples):
            length = int(sample["attention_mask"].sum())
            if length > self.max_length:
                raise ValueError(f"Row {index} has {length} tokens, more than max_length={self.max_length}.")
        groups: list[list[dict[str, torch.Tensor]]] = []
        used = self.max_length
        for sample in samples:
            length = int(sample["attention_mask"].sum())
            if used + length > self.max_length:
                groups.append([])
                used = 0
            groups[-1].append(sample)
            used += length
        width = max(sum(int(s["attention_mask"].sum()) for s in group) for group in groups)
        pad_id = self.collator.processor.tokenizer.pad_token_id
        input_ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
        labels = torch.full((len(groups), width), -100, dtype=torch.long)
        position_ids = torch.zeros((len(groups), width), dtype=torch.long)
        mask = torch.zeros((len(groups), 1, width, width), dtype=torch.bool)
        per_image: dict[str, list[torch.Tensor]] = {}
        for row, group in enumerate(groups):
            offset = 0
            for sample in group:
                length = int(sample["attention_mask"].sum())
                span = slice(offset, offset + length)
                input_ids[row, span] = sample["input_ids"][0, :length]
                labels[row, span] = sample["labels"][0, :length]
                labels[row, offset] = -100
                position_ids[row, span] = torch.arange(length)
                mask[row, 0, span, span] = torch.tril(torch.ones(length, length, dtype=torch.bool))
                offset += length
                for key in PER_IMAGE_KEYS:
                    if key in sample:
                        per_image.setdefault(key, []).append(sample[key])
            mask[row, 0, offset:, :] = False
            mask[row, 0, torch.arange(offset, width), torch.arange(offset, width)] = True  # padding sees itself
        batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "attention_mask": mask}
        batch.update({key: torch.cat(values) for key, values in per_image.items()})
        return batch
