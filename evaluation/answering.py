"""Answering image questions with any transformers image-text-to-text model (DEEM, LLaVA, ...).

Batches mix the questions of several images (questions of one image stay together, in order), left-padded and
decoded greedily. DEEM encodes each image once for all its questions, even across batches: `get_image_features`
on the batch's new images, then `generate(mm_encoder_outputs=...)` with each row's image picked from the cache.
Prompts: `paper` (default) puts the question into the paper's Figure 8 layout for the benchmark's task
(`processing.prompts_deem.QUESTION_TEMPLATES`): DEEM gets the lead sentence, the image after it and the answer
prefix ("The answer is") after `## ASSISTANT:`; other models get the same user turn (lead, image, question) in
their own chat template but no answer prefix, which is DEEM's trained answer format, not theirs. `generic` is
the image then the bare question in the model's chat template, for every model. Under `accelerate launch` each
process answers its own shard of images and the main process gathers everything.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from .images import rgb_image

PROMPT_STYLES = ("paper", "generic")
BENCHMARK_TASKS = {"vqav2": "vqa"}  # benchmark name → its Figure 8 template; the others share their name


@dataclass
class Question:
    index: int
    image: str | Path | Image.Image
    text: str


def _checked_task(task: str, prompt: str) -> str:
    """A benchmark's task name, refused when the paper prompt style has no template for it."""
    from processing.prompts_deem import QUESTION_TEMPLATES  # `processing` imports the model code: only when used

    task = BENCHMARK_TASKS.get(task, task)
    if prompt == "paper" and task not in QUESTION_TEMPLATES:
        raise ValueError(f"No paper prompt for task {task!r}; known: {', '.join(QUESTION_TEMPLATES)}.")
    return task


class ImageQuestionAnswerer:
    """Loads a folder or hub id with `AutoProcessor` + `AutoModelForImageTextToText` (remote code allowed).

    `task` is the benchmark (its Figure 8 template under `prompt="paper"`); `run_settings()` records the prompt
    and the generation settings a result was made with."""

    def __init__(self, model: str | Path, max_new_tokens: int = 8, batch_size: int = 8, device: str | None = None,
                 dtype: torch.dtype | None = None, prompt: str = "paper", task: str = "vqa") -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if prompt not in PROMPT_STYLES:
            raise ValueError(f"Unknown prompt style {prompt!r}; choose from {', '.join(PROMPT_STYLES)}.")
        task = _checked_task(task, prompt)
        self.processor = AutoProcessor.from_pretrained(model, trust_remote_code=True)
        self.model = AutoModelForImageTextToText.from_pretrained(model, trust_remote_code=True, dtype=dtype).eval()
        if device is not None:
            self.model.to(device)
        self.processor.tokenizer.padding_side = "left"
        self.batch_size = batch_size
        self.prompt_style, self.task = prompt, task
        # Greedy, whatever the checkpoint's generation_config says: benchmark numbers must not depend on sampling.
        self.generation_kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False,
                                                  "num_beams": 1}
        self.is_deem = getattr(self.model.config, "model_type", None) == "deem"
        # A diffusion backbone conditions the image features on the question's user turn: nothing to reuse there.
        self.reuses_image_features = self.is_deem and not hasattr(self.model, "diffusion_features")

    def for_task(self, task: str) -> ImageQuestionAnswerer:
        """This answerer (the same loaded model and processor, no reload) asking another benchmark's questions."""
        other = copy.copy(self)
        other.task = _checked_task(task, self.prompt_style)
        return other

    def prompt(self, question: str) -> str:
        """The whole prompt text for one question, in this answerer's style (see the module docstring)."""
        prefix = ""
        if self.prompt_style == "generic":
            content = [{"type": "image"}, {"type": "text", "text": question}]
        else:
            from processing.prompts_deem import IMAGE_MARKER, question_prompt

            user, prefix = question_prompt(self.task, question)
            before, after = user.split(IMAGE_MARKER, 1)
            content = [*([{"type": "text", "text": before}] if before else []), {"type": "image"},
                       {"type": "text", "text": after}]
            prefix = prefix if self.is_deem else ""
        text = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                  tokenize=False)
        return f"{text} {prefix}" if prefix else text

    def generation_settings(self) -> dict[str, Any]:
        """The decoding every answer was made with (`report.decoding_settings` reads it into the results file)."""
        return {"strategy": "greedy", **self.generation_kwargs, "batch_size": self.batch_size}

    def run_settings(self) -> dict[str, Any]:
        """What a result depends on besides model and data: the prompt style, the whole prompt with `{question}`
        where each question goes, and the decoding."""
        return {"prompt": self.prompt_style, "task": self.task, "prompt_template": self.prompt("{question}"),
                "generation": self.generation_settings()}

    @torch.no_grad()
    def answer_batch(self, images: Sequence[Image.Image], questions: Sequence[str],
                     image_keys: Sequence[Hashable] | None = None, cache: dict | None = None) -> list[str]:
        """One left-padded batch: row i asks `questions[i]` about `images[i]`. With feature reuse (DEEM), each
        distinct image (by `image_keys`, else by object) is encoded once, or taken from `cache`, where the
        caller keeps an image's features while it still has questions in later batches."""
        prompts = [self.prompt(q) for q in questions]
        if not self.reuses_image_features:
            inputs = self.processor(text=prompts, images=[[image] for image in images], return_tensors="pt",
                                    padding=True).to(self.model.device)
        else:
            keys = list(image_keys) if image_keys is not None else [id(image) for image in images]
            inputs = self._tokenize(prompts)
            inputs["mm_encoder_outputs"] = {"image": self._features(images, keys, {} if cache is None else cache)}
        generated = self.model.generate(**inputs, **self.generation_kwargs)
        new_tokens = generated[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]

    def answer_image(self, image: Image.Image, questions: Sequence[str]) -> list[str]:
        """All questions about one image, as one batch."""
        return self.answer_batch([image] * len(questions), questions)

    def _tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The processor's text side alone (its image slots expanded), so no image is preprocessed per row."""
        slot = self.processor.image_slot
        expanded = [p.replace(self.processor.image_marker, slot) for p in prompts]
        tokens = self.processor.tokenizer(expanded, return_tensors="pt", padding=True)
        return {k: v.to(self.model.device) for k, v in tokens.items()}

    def _features(self, images: Sequence[Image.Image], keys: list[Hashable], cache: dict) -> Any:
        """Each row's image features (one image per row): new images encoded together, the rest from `cache`."""
        new = {key: image for key, image in zip(keys, images) if key not in cache}
        if new:
            from processing.prompts_deem import IMAGE_MARKER

            pixels = self.processor(text=IMAGE_MARKER * len(new), images=list(new.values()), return_tensors="pt")
            encoded = self.model.get_image_features(pixels["pixel_values"].to(self.model.device), return_dict=True)
            self._feature_class = type(encoded)
            for position, key in enumerate(new):
                cache[key] = {name: value[position : position + 1] if isinstance(value, torch.Tensor) else value
                              for name, value in encoded.items()}
        fields = {name: torch.cat([cache[key][name] for key in keys]) if isinstance(value, torch.Tensor) else value
                  for name, value in cache[keys[0]].items()}
        return self._feature_class(**fields)

    def answer(self, questions: Sequence[Question], show_progress: bool = True) -> dict[int, str]:
        """Answers keyed by question index; under several processes, each answers a shard and all are gathered."""
        from accelerate import PartialState
        from accelerate.utils import gather_object

        state = PartialState(cpu=not torch.cuda.is_available())
        groups: dict[str, list[Question]] = {}
        for question in questions:
            groups.setdefault(_image_key(question.image), []).append(question)
        answers: dict[int, str] = {}
        with state.split_between_processes(list(groups)) as shard:
            ordered = [(key, question) for key in shard for question in groups[key]]
            remaining = Counter(key for key, _ in ordered)
            loaded: dict[str, Image.Image] = {}
            cache: dict[str, Any] = {}  # features of images with questions left
            starts = range(0, len(ordered), self.batch_size)
            for start in tqdm(starts, desc="answering", disable=not (show_progress and state.is_main_process)):
                batch = ordered[start : start + self.batch_size]
                for key, question in batch:
                    if key not in loaded:
                        loaded[key] = rgb_image(question.image)
                keys = [key for key, _ in batch]
                texts = self.answer_batch([loaded[key] for key in keys], [q.text for _, q in batch], keys, cache)
                for (key, question), text in zip(batch, texts):
                    answers[question.index] = text
                    remaining[key] -= 1
                    if not remaining[key]:
                        loaded.pop(key)
                        cache.pop(key, None)
        if state.num_processes > 1:
            merged: dict[int, str] = {}
            for part in gather_object([answers]):
                merged.update(part)
            answers = merged
        return answers


def _image_key(image: str | Path | Image.Image) -> str:
    return f"pil:{id(image)}" if isinstance(image, Image.Image) else str(image)


