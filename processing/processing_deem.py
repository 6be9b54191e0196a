"""DeemProcessor: tokenizer + DeemImageProcessor + the paper's chat template.

Each `<image>` in the text (`processor.image_token`) becomes `<|startofimage|>` followed by `num_image_tokens`
`<|sniffer|>` placeholders. Images may be given as paths, URLs or base64 strings too, as in chat messages
(`{"type": "image", "url"/"path": ...}`); see `image_inputs_deem`.

Keyword arguments are transformers' `ProcessingKwargs`, flat (`padding=True`, `do_rescale=False`, `train=True`) or
structured (`text_kwargs={...}`, `images_kwargs={...}`, `common_kwargs={...}`), merged by transformers'
`ProcessorMixin._merge_kwargs` (a name given both ways is an error). A name that is no processor, text, image,
video or audio option is refused; video and audio options are accepted (transformers' chat path forwards them)
and have nothing to act on, since videos and audio themselves are refused.

Outputs: `input_ids`, `attention_mask` and, with images, `pixel_values` — what `model_input_names` lists. On request
only: `image_masks` (`image_masks=` given), `decoder_pixel_values` (`return_decoder_views=True`), `mm_token_type_ids`
(`return_mm_token_type_ids=True`; 1 on every token of an image slot), `text_replacement_offsets`
(`return_text_replacement_offsets=True`), `offset_mapping` (`return_offsets_mapping=True`).
Exported as remote code: flat, sibling imports only.
"""

# No `from __future__ import annotations`: transformers reads the TypedDict's annotations as types at runtime.
import json
import os
import re
from typing import Any, is_typeddict

import torch
from tokenizers import AddedToken
from transformers import AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import MultiModalData, ProcessingKwargs, ProcessorMixin, Unpack

from .image_processing_deem import DeemImageProcessor, DeemImageProcessorKwargs
from .prompts_deem import CHAT_TEMPLATE, IMAGE_MARKER, SYSTEM_PROMPT, preset_prompt


class DeemProcessorKwargs(ProcessingKwargs, total=False):
    """transformers' processor kwargs with DEEM's image options (`train`, `seed`, `return_decoder_views`, ...)."""

    images_kwargs: DeemImageProcessorKwargs


class DeemProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]
    valid_processor_kwargs = DeemProcessorKwargs
    text_kwargs = {"return_tensors": "pt"}  # DEEM's processor has always returned tensors

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
        self.image_token = self.image_marker = IMAGE_MARKER  # what texts hold; `image_marker` is the older name
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
    ) -> "DeemProcessor":
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
    def from_hub_config(cls, folder: str | os.PathLike, tokenizer: Any = None) -> "DeemProcessor":
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

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> list[str]:
        """transformers' save, without its side effect on a remote-code processor: it stamps the `auto_map` it
        writes onto the processor itself, which `from_pretrained` never restores, so a saved processor and its
        reloaded copy would differ (`to_dict`)."""
        had_auto_map = "auto_map" in self.__dict__
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            if not had_auto_map:
                self.__dict__.pop("auto_map", None)

    @property
    def image_slot(self) -> str:
        return self.image_start_token + self.image_placeholder_token * self.num_image_tokens

    @property
    def image_token_ids(self) -> list[int]:
        """Both tokens of an image slot count as image tokens (`mm_token_type_ids`)."""
        return [self.image_start_token_id, self.image_token_id]

    def __call__(
        self,
        text: str | list[str] | None = None,
        images: Any = None,
        image_masks: Any = None,
        **kwargs: Unpack[DeemProcessorKwargs],
    ) -> BatchFeature:
        """Tokenise texts with `<image>` markers and process their images: a flat list fills the slots in order;
        one list per text must hold exactly that text's images. An image may be a path, URL or base64 string.

        `image_masks` mirrors `images` (a mask or None per image). Padding is on for batches; for batched
        generation pass `padding_side="left"`. Options: see the module docstring.
        """
        for modality in ("videos", "audio"):
            if kwargs.pop(modality, None) is not None:
                raise ValueError(f"DeemProcessor takes text and images only; got {modality}.")
        unknown = set(kwargs) - self._accepted_kwargs()
        if unknown:
            raise TypeError(f"DeemProcessor got unexpected arguments: {', '.join(sorted(unknown))} (neither "
                            f"processor, text nor image options; see transformers' ProcessingKwargs)")
        if text is None and images is None:
            raise ValueError("DeemProcessor needs text (with '<image>' where each image goes), images, or both.")
        merged = self._merge_kwargs(self.valid_processor_kwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs,
                                    **kwargs)
        text_kwargs, images_kwargs = merged["text_kwargs"], merged["images_kwargs"]
        if text is None:  # images alone: the image outputs only, as transformers' processors give
            masks = None if image_masks is None else _flatten(image_masks)
            return BatchFeature(data=self._image_inputs([], _flatten(images), masks, images_kwargs),
                                tensor_type=text_kwargs.get("return_tensors"))
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("Empty batch: no texts given.")
        for key in ("return_mm_token_type_ids", "return_text_replacement_offsets"):
            text_kwargs.pop(key, None)  # transformers mirrors these processor options into text_kwargs
        slots = [t.count(self.image_token) for t in texts]
        flat_images = _match_slots(images, slots, "images", self.image_token)
        flat_masks = None if image_masks is None else _match_slots(image_masks, slots, "image masks", self.image_token)
        expanded, offsets = self._expand_image_tokens(texts)
        text_kwargs.setdefault("padding", len(expanded) > 1)
        data = dict(self.tokenizer(expanded, **text_kwargs))
        if merged.get("return_mm_token_type_ids"):
            data["mm_token_type_ids"] = self.create_mm_token_type_ids(data["input_ids"])
        if merged.get("return_text_replacement_offsets"):
            data["text_replacement_offsets"] = offsets
        if flat_images:
            data.update(self._image_inputs(texts, flat_images, flat_masks, images_kwargs))
        return BatchFeature(data=data, tensor_type=text_kwargs.get("return_tensors"),
                            skip_tensor_conversion=self.skip_tensor_conversion)

    def _accepted_kwargs(self) -> set[str]:
        names = {"common_kwargs"}
        for name, annotation in self.valid_processor_kwargs.__annotations__.items():
            names.add(name)
            if is_typeddict(annotation):
                names.update(annotation.__annotations__)
        return names

    def _get_num_multimodal_tokens(self, image_sizes: list[Any] | None = None, **kwargs: Any) -> MultiModalData:
        """Tokens per image, for planners such as vLLM: one slot (start + `num_image_tokens`) whatever its size."""
        if image_sizes is None:
            return MultiModalData()
        return MultiModalData(num_image_tokens=[1 + self.num_image_tokens] * len(image_sizes),
                              num_image_patches=[1] * len(image_sizes))

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs: Any) -> str:
        """The text an `<image>` becomes (transformers' hook; every DEEM image has the same slot)."""
        return self.image_slot

    def _expand_image_tokens(self, texts: list[str]) -> tuple[list[str], list[list[dict[str, Any]]]]:
        """Texts with each `<image>` replaced by its slot, and where each went (transformers' replacement offsets,
        which `apply_chat_template` uses to keep assistant masks aligned)."""
        expanded, all_offsets, index = [], [], 0
        for sample in texts:
            pieces, offsets, last, shift = [], [], 0, 0
            for match in re.finditer(re.escape(self.image_token), sample):
                replacement = self.replace_image_token({}, index)
                index += 1
                start, end = match.span()
                pieces += [sample[last:start], replacement]
                offsets.append({"type": "image", "span": (start, end), "text": match.group(),
                                "new_span": (start + shift, start + shift + len(replacement)),
                                "replacement": replacement})
                shift += len(replacement) - (end - start)
                last = end
            expanded.append("".join(pieces) + sample[last:])
            all_offsets.append(offsets)
        return expanded, all_offsets

    def _image_inputs(self, texts: list[str], images: list[Any], masks: list[Any] | None,
                      images_kwargs: dict[str, Any]) -> dict[str, Any]:
        return dict(self.image_processor(images, image_masks=masks, **images_kwargs))

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

    @property
    def model_input_names(self) -> list[str]:
        return [*self.tokenizer.model_input_names, *self.image_processor.model_input_names,
                "diffusion_pixel_values", "condition_input_ids", "condition_attention_mask"]

    def _image_inputs(self, texts: list[str], images: list[Any], masks: list[Any] | None,
                      images_kwargs: dict[str, Any]) -> dict[str, Any]:
        if not texts:
            raise ValueError("DeemDiffusionProcessor needs the text of each image: it conditions the UNet.")
        wants_decoder_views = bool(images_kwargs.get("return_decoder_views"))
        # One pass makes both views from the same crop; the UNet's view is the decoder view.
        data = super()._image_inputs(texts, images, masks, {**images_kwargs, "return_decoder_views": True})
        view = data["decoder_pixel_values"] if wants_decoder_views else data.pop("decoder_pixel_values")
        data["diffusion_pixel_values"] = view
        conditions = [condition for sample in texts for condition in self.condition_texts(sample)]
        tokens = self.condition_tokenizer(conditions, padding="max_length", truncation=True,
                                          max_length=self.condition_tokenizer.model_max_length, return_tensors="pt")
        data["condition_input_ids"] = tokens["input_ids"]
        data["condition_attention_mask"] = tokens["attention_mask"]
        return data

    def condition_texts(self, sample: str) -> list[str]:
        """One conditioning text per image marker of `sample` (the answer of a chat never leaks into it)."""
        turns = re.split(r"\n## (?:USER|ASSISTANT): ", sample)
        if len(turns) > 1:  # a chat: the user turn holding each image
            found = [t for t in turns[1:] if self.image_marker in t]
            return [self._clean(t) for t in found for _ in range(t.count(self.image_marker))]
        return [self._clean(sample)] * sample.count(self.image_marker)

    def _clean(self, text: str) -> str:
        return " ".join(text.replace(self.image_marker, " ").replace("</s>", " ").split())


def _flatten(items: Any) -> list[Any]:
    """Images (or masks) without texts: one item, a flat list, or lists of them (one level), in order."""
    items = list(items) if isinstance(items, (list, tuple)) else [items]
    return [x for item in items for x in (item if isinstance(item, (list, tuple)) else [item])]


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
            raise ValueError(f"The number of '{marker}' tokens in the prompts should be the same as the number of "
                             f"{name}: the text has {sum(slots)} image slots ('{marker}') but {len(items)} {name} "
                             f"were given; give one per slot.")
        return list(items)
    if not all(nested):
        raise ValueError(f"The {name} mix lists and single items: give one flat list, or one list per text.")
    if len(items) != len(slots):
        raise ValueError(f"Got {len(items)} lists of {name} for {len(slots)} texts; give one list per text (the "
                         f"number of '{marker}' tokens in the prompts should be the same as the number of {name}).")
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
