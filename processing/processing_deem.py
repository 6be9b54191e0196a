"""DeemProcessor: tokenizer + DeemImageProcessor + the paper's chat template.

Each `<image>` in the text becomes `<|startofimage|>` followed by `num_image_tokens` `<|sniffer|>` placeholders.
Exported as remote code: flat, sibling imports only.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch
from tokenizers import AddedToken
from transformers import AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_processing_deem import DeemImageProcessor  # noqa: F401  (the class travels with the processor)
from .prompts_deem import CHAT_TEMPLATE, IMAGE_MARKER, SYSTEM_PROMPT, preset_prompt

_TOKENIZER_KWARGS = ("padding", "truncation", "max_length", "add_special_tokens", "padding_side",
                     "pad_to_multiple_of", "return_attention_mask", "return_offsets_mapping")
# Bookkeeping keys that transformers' chat-template path passes along; they do not apply to this processor.
_IGNORED_KWARGS = ("sanitize_control_tokens", "return_mm_token_type_ids", "images_kwargs", "text_kwargs",
                   "videos_kwargs", "audio_kwargs", "common_kwargs")


class DeemProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        num_image_tokens: int = 77,
        image_start_token: str = "<|startofimage|>",
        image_placeholder_token: str = "<|sniffer|>",
        **kwargs: Any,
    ) -> None:
        self.num_image_tokens = num_image_tokens
        self.image_start_token = image_start_token
        self.image_placeholder_token = image_placeholder_token
        self.image_marker = IMAGE_MARKER
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE, **kwargs)
        vocab = self.tokenizer.get_vocab()
        for token in (image_start_token, image_placeholder_token):
            if token not in vocab:
                raise ValueError(f"The tokenizer has no {token!r} token; add it as a special token first.")
        self.image_start_token_id = vocab[image_start_token]
        self.image_token_id = vocab[image_placeholder_token]

    @classmethod
    def from_base_tokenizer(
        cls, tokenizer: Any, image_processor: DeemImageProcessor | None = None, **kwargs: Any
    ) -> DeemProcessor:
        """A processor around a plain LLM tokenizer (a hub id, a folder or an instance): appends
        `<|startofimage|>`, `<|sniffer|>` and, if the tokenizer has none, a `<pad>` of its own, in that order
        (for Vicuna: ids 32000, 32001, 32002, as `DeemConfig()` expects)."""
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        start = kwargs.get("image_start_token", "<|startofimage|>")
        placeholder = kwargs.get("image_placeholder_token", "<|sniffer|>")
        new = [t for t in (start, placeholder) if t not in tokenizer.get_vocab()]
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in new], special_tokens=True)
        if tokenizer.pad_token is None:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
        return cls(image_processor or DeemImageProcessor(), tokenizer, **kwargs)

    @classmethod
    def from_hub_config(cls, folder: str | os.PathLike, tokenizer: Any = None) -> DeemProcessor:
        """A processor from a `hub_configs/` folder whose `processor_config.json` names a `base_tokenizer`
        (e.g. deem-7b: Vicuna-7B v1.5); `tokenizer` overrides that name (a local copy, say)."""
        with open(os.path.join(folder, "processor_config.json")) as handle:
            config = json.load(handle)
        image_processor = DeemImageProcessor(**{k: v for k, v in config.pop("image_processor", {}).items()
                                                if k != "image_processor_type"})
        base = tokenizer if tokenizer is not None else config.pop("base_tokenizer")
        config.pop("base_tokenizer", None)
        config.pop("processor_class", None)
        return cls.from_base_tokenizer(base, image_processor=image_processor, **config)

    @property
    def image_slot(self) -> str:
        return self.image_start_token + self.image_placeholder_token * self.num_image_tokens

    def __call__(
        self,
        text: str | list[str] | None = None,
        images: Any = None,
        image_masks: Any = None,
        return_tensors: str | None = "pt",
        return_decoder_views: bool = False,
        train: bool = False,
        seed: int | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Tokenise texts with `<image>` markers and process their images: a flat list fills the slots in order;
        one list per text must hold exactly that text's images.

        `image_masks` mirrors `images` (a mask or None per image). Padding is on for batches; for batched
        generation pass `padding_side="left"`.
        """
        for modality in ("videos", "audio"):
            if kwargs.pop(modality, None) is not None:
                raise ValueError(f"DeemProcessor takes text and images only; got {modality}.")
        unknown = set(kwargs) - set(_TOKENIZER_KWARGS) - set(_IGNORED_KWARGS)
        if unknown:
            raise TypeError(f"DeemProcessor got unexpected arguments: {', '.join(sorted(unknown))}")
        if text is None:
            raise ValueError("DeemProcessor needs text (use '<image>' where each image goes).")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("Empty batch: no texts given.")
        slots = [t.count(self.image_marker) for t in texts]
        flat_images = _match_slots(images, slots, "images", self.image_marker)
        flat_masks = None if image_masks is None else _match_slots(image_masks, slots, "image masks", self.image_marker)
        expanded = [t.replace(self.image_marker, self.image_slot) for t in texts]
        tokenizer_kwargs = {k: kwargs[k] for k in _TOKENIZER_KWARGS if k in kwargs}
        tokenizer_kwargs.setdefault("padding", len(expanded) > 1)
        data = dict(self.tokenizer(expanded, return_tensors=return_tensors, **tokenizer_kwargs))
        if flat_images:
            data.update(self.image_processor.preprocess(
                flat_images, image_masks=flat_masks, return_decoder_views=return_decoder_views, train=train,
                seed=seed, return_tensors=return_tensors,
            ))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def prompt(self, preset: str, with_answer_prefix: bool = True, **fields: str) -> str:
        """A full chat prompt for one of the paper's presets (vqa, caption, region, pope, robustvqa)."""
        user, prefix = preset_prompt(preset, **fields)
        text = self.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                        tokenize=False)
        return f"{text} {prefix}" if with_answer_prefix and prefix else text

    def decode_new_tokens(self, generated: torch.Tensor, prompt_length: int) -> list[str]:
        """The text each row generated after its (left-padded) prompt."""
        return self.tokenizer.batch_decode(generated[:, prompt_length:], skip_special_tokens=True)

    def decode_interleaved(self, parts: list[Any]) -> list[Any]:
        """`model.generate_interleaved` output (token-id tensors and PIL images) → texts and images, in order."""
        return [self.tokenizer.decode(part, skip_special_tokens=True) if isinstance(part, torch.Tensor) else part
                for part in parts]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_masks"]

    @property
    def default_system_prompt(self) -> str:
        return SYSTEM_PROMPT


class DeemDiffusionProcessor(DeemProcessor):
    """DeemProcessor for a model whose visual backbone includes the diffusion UNet: it also returns, per image,
    the UNet's view of the image (`diffusion_pixel_values`, [-1, 1]) and the text that conditions the UNet
    (`condition_input_ids`/`condition_attention_mask`, from `condition_tokenizer`, the SD text encoder's):
    in a chat, the user turn that holds the image; otherwise the sample's text, without image markers."""

    attributes = ["image_processor", "tokenizer", "condition_tokenizer"]

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, condition_tokenizer: Any = None,
                 chat_template: str | None = None, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, chat_template=chat_template,
                         condition_tokenizer=condition_tokenizer, **kwargs)

    def __call__(self, text: str | list[str] | None = None, images: Any = None, **kwargs: Any) -> BatchFeature:
        wants_decoder_views = kwargs.pop("return_decoder_views", False)
        # One pass makes both views from the same crop; the UNet's view is the decoder view.
        batch = super().__call__(text=text, images=images, return_decoder_views=True, **kwargs)
        if "pixel_values" not in batch:
            return batch
        view = batch["decoder_pixel_values"] if wants_decoder_views else batch.pop("decoder_pixel_values")
        batch["diffusion_pixel_values"] = view
        texts = [text] if isinstance(text, str) else list(text)
        conditions = [condition for sample in texts for condition in self.condition_texts(sample)]
        tokens = self.condition_tokenizer(conditions, padding="max_length", truncation=True,
                                          max_length=self.condition_tokenizer.model_max_length, return_tensors="pt")
        batch["condition_input_ids"] = tokens["input_ids"]
        batch["condition_attention_mask"] = tokens["attention_mask"]
        return batch

    def condition_texts(self, sample: str) -> list[str]:
        """One conditioning text per image marker of `sample` (the answer of a chat never leaks into it)."""
        turns = re.split(r"\n## (?:USER|ASSISTANT): ", sample)
        if len(turns) > 1:  # a chat: the user turn holding each image
            found = [t for t in turns[1:] if self.image_marker in t]
            return [self._clean(t) for t in found for _ in range(t.count(self.image_marker))]
        return [self._clean(sample)] * sample.count(self.image_marker)

    def _clean(self, text: str) -> str:
        return " ".join(text.replace(self.image_marker, " ").replace("</s>", " ").split())


def _match_slots(items: Any, slots: list[int], name: str, marker: str) -> list[Any]:
    """`items` (images, or masks) in slot order, checked against the texts' slot counts.

    A flat list fills the slots of all texts in order; a list of lists gives each text its own, and each must
    match that text's count, so an image can never move silently to another row.
    """
    if items is None:
        items = []
    elif not isinstance(items, (list, tuple)):
        items = [items]
    nested = [isinstance(item, (list, tuple)) for item in items]
    if not any(nested):
        if len(items) != sum(slots):
            raise ValueError(f"The text has {sum(slots)} image slots ('{marker}') but {len(items)} {name} were "
                             f"given; give one per slot.")
        return list(items)
    if not all(nested):
        raise ValueError(f"The {name} mix lists and single items: give one flat list, or one list per text.")
    if len(items) != len(slots):
        raise ValueError(f"Got {len(items)} lists of {name} for {len(slots)} texts; give one list per text.")
    flat = []
    for row, (group, count) in enumerate(zip(items, slots)):
        if any(isinstance(item, (list, tuple)) for item in group):
            raise ValueError(f"The {name} of text {row} hold a list; nest {name} one level deep at most.")
        if len(group) != count:
            raise ValueError(f"Text {row} has {count} image slots ('{marker}') but {len(group)} {name} "
                             f"were given for it.")
        flat.extend(group)
    return flat


DeemProcessor.register_for_auto_class("AutoProcessor")
DeemDiffusionProcessor.register_for_auto_class("AutoProcessor")
