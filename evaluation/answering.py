"""Answering image questions with any transformers image-text-to-text model (DEEM, LLaVA, ...).

Questions about the same image are generated together, with the KV cache; for DEEM the image features are
computed once per image and reused across its questions. Under `accelerate launch` each process answers its
own shard and the main process gathers everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from .images import open_image, to_rgb


@dataclass
class Question:
    index: int
    image: str | Path | Image.Image
    text: str


class ImageQuestionAnswerer:
    """Loads a folder or hub id with `AutoProcessor` + `AutoModelForImageTextToText` (remote code allowed)."""

    def __init__(self, model: str | Path, max_new_tokens: int = 8, batch_size: int = 8, device: str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model, trust_remote_code=True)
        self.model = AutoModelForImageTextToText.from_pretrained(model, trust_remote_code=True, dtype=dtype).eval()
        if device is not None:
            self.model.to(device)
        self.processor.tokenizer.padding_side = "left"
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.reuses_image_features = getattr(self.model.config, "model_type", None) == "deem"

    def prompt(self, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @torch.no_grad()
    def answer_image(self, image: Image.Image, questions: Sequence[str]) -> list[str]:
        """All questions about one image, as one left-padded batch."""
        prompts = [self.prompt(q) for q in questions]
        inputs = self.processor(text=prompts, images=[[image]] * len(prompts), return_tensors="pt", padding=True)
        inputs = inputs.to(self.model.device)
        if self.reuses_image_features:
            features = self.model.get_image_features(inputs["pixel_values"][:1])
            inputs["mm_encoder_outputs"] = {"image": type(features)(
                **{k: v.expand(len(prompts), *v.shape[1:]) if isinstance(v, torch.Tensor) else v
                   for k, v in features.items()})}
            del inputs["pixel_values"]
        generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = generated[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]

    def answer(self, questions: Sequence[Question], show_progress: bool = True) -> dict[int, str]:
        """Answers keyed by question index; under several processes, each answers a shard and all are gathered."""
        from accelerate import PartialState
        from accelerate.utils import gather_object

        state = PartialState(cpu=not torch.cuda.is_available())
        groups: dict[str, list[Question]] = {}
        for question in questions:
            groups.setdefault(_image_key(question.image), []).append(question)
        keys = list(groups)
        answers: dict[int, str] = {}
        with state.split_between_processes(keys) as shard:
            for key in tqdm(shard, desc="answering", disable=not (show_progress and state.is_main_process)):
                group = groups[key]
                image = _load(group[0].image)
                for start in range(0, len(group), self.batch_size):
                    chunk = group[start : start + self.batch_size]
                    for question, text in zip(chunk, self.answer_image(image, [q.text for q in chunk])):
                        answers[question.index] = text
        if state.num_processes > 1:
            merged: dict[int, str] = {}
            for part in gather_object([answers]):
                merged.update(part)
            answers = merged
        return answers


def _image_key(image: str | Path | Image.Image) -> str:
    return f"pil:{id(image)}" if isinstance(image, Image.Image) else str(image)


def _load(image: str | Path | Image.Image) -> Image.Image:
    return to_rgb(image) if isinstance(image, Image.Image) else open_image(image)
