"""Condition alignment: fit DEEM's generation-side condition mapper to a diffusion model's own text encoder.

DEEM's image decoder reads captions through the LLM: the caption's LLM states, reversed, go through
`context_proj` and the condition resampler to the frozen UNet's cross-attention (the NIP path). In the paper that
mapper learns from the NIP denoising loss alone, over millions of images. A small model trained on little data
learns a condition that carries the caption (a linear probe reads it) in a language the frozen UNet does not read,
so its images ignore their captions. GILL (Koh et al., 2023) fits the same kind of mapper directly: mean squared
error between the mapper's tokens and the diffusion model's own text-encoder states for the same caption. The UNet
was trained on exactly those states, so a mapper that imitates them is one it reads. This is that loss, on DEEM's
mapper only; it is not one of the paper's stages. Nothing but `context_proj` and the condition resampler learns,
so question answering and the CSR path are untouched (neither reads them).

    python -m trainers.condition_alignment --model_name_or_path hub_configs/deem-toy \
        --captions captions.jsonl --output_dir outputs/aligned --max_steps 3000 --learning_rate 3e-3 \
        --per_device_train_batch_size 64 --weight_decay 0 --warmup_steps 150 --lr_scheduler_type cosine --use_cpu
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset, load_dataset
from transformers import AutoTokenizer, CLIPTextModel, HfArgumentParser, Trainer, TrainingArguments, set_seed

from modeling_deem import DeemForConditionalGeneration

from .data_builders import DATA_FILE_KINDS
from .stages import parameter_group

_UNSET = object()


def freeze_all_but_condition_mapper(model: torch.nn.Module) -> list[str]:
    """Only the condition side (`trainers.stages`' "condition_side" group: `context_proj`, the condition resampler
    and the negative condition, which this loss never reaches) keeps gradients; returns their parameters' names."""
    trainable = []
    for name, parameter in model.named_parameters():
        keep = parameter_group(name) == "condition_side"
        parameter.requires_grad_(keep)
        if keep:
            trainable.append(name)
    return trainable


@dataclass
class ConditionAlignmentCollator:
    """Caption rows → the DEEM prompts (left-padded, as image generation reads them) and the diffusion tokenizer's
    ids of the same captions, right-padded to `target_length` (default: the tokenizer's full length) as Stable
    Diffusion's pipelines encode prompts."""

    processor: Any
    text_tokenizer: Any
    caption_column: str = "caption"
    target_length: int | None = None

    def __post_init__(self) -> None:
        # A fast tokenizer keeps the padding side of its last call in its backend (and writes it into
        # tokenizer.json on save): padding through copies leaves the caller's tokenizers as they were.
        self.processor = copy.deepcopy(self.processor)
        self.text_tokenizer = copy.deepcopy(self.text_tokenizer)
        if self.target_length is None:
            self.target_length = self.text_tokenizer.model_max_length

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        captions = []
        for index, row in enumerate(rows):
            if self.caption_column not in row:
                raise KeyError(f"Batch row {index} has no {self.caption_column!r} column (it has {sorted(row)}).")
            caption = row[self.caption_column]
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(f"Batch row {index}'s {self.caption_column!r} must be a non-empty string, got "
                                 f"{caption!r}.")
            captions.append(caption)
        prompts = self.processor(text=captions, padding=True, padding_side="left", return_tensors="pt")
        targets = self.text_tokenizer(captions, padding="max_length", max_length=self.target_length, truncation=True,
                                      padding_side="right", return_tensors="pt")
        return {"input_ids": prompts["input_ids"], "attention_mask": prompts["attention_mask"],
                "target_input_ids": targets["input_ids"]}


class ConditionAlignmentTrainer(Trainer):
    """transformers' Trainer with GILL's mapper loss: MSE between DEEM's condition for a caption prompt and the
    first `num_image_tokens` states of the frozen text encoder for that caption. The DEEM model given is frozen
    in place but for its condition mapper (`requires_grad`); the text encoder never learns and is not saved. One
    process: the loss calls the model's own methods, not its forward, which DDP/DeepSpeed wrappers need."""

    def __init__(self, model: DeemForConditionalGeneration, args: TrainingArguments, *, text_encoder: CLIPTextModel,
                 text_tokenizer: Any, caption_column: str = "caption", processing_class: Any = None,
                 **kwargs: Any) -> None:
        config = model.config
        if not getattr(config, "with_image_decoder", False):
            raise ValueError("Condition alignment needs a DEEM model with an image decoder (with_image_decoder).")
        if text_encoder.config.hidden_size != config.cross_attention_dim:
            raise ValueError(f"The text encoder's width {text_encoder.config.hidden_size} is not the UNet's "
                             f"cross_attention_dim {config.cross_attention_dim}: it is not the UNet's text encoder.")
        # The text encoder's states are the targets: as many as the tokenizer pads to, at most its positions.
        target_length = min(int(text_tokenizer.model_max_length), text_encoder.config.max_position_embeddings)
        if config.num_image_tokens > target_length:
            raise ValueError(f"DEEM's condition has {config.num_image_tokens} tokens but the text encoder gives "
                             f"{target_length} (tokenizer model_max_length {text_tokenizer.model_max_length}, "
                             f"encoder max_position_embeddings {text_encoder.config.max_position_embeddings}): "
                             "there is no target for the last ones.")
        if args.world_size > 1:
            raise ValueError(f"Condition alignment runs in one process (world size {args.world_size}): its loss "
                             "calls the model's own methods, which DDP and DeepSpeed wrappers do not synchronise.")
        processing_class = processing_class if processing_class is not None else model.processor
        if processing_class is None:
            raise ValueError("No DEEM processor: pass processing_class or load a model saved with its processor.")
        freeze_all_but_condition_mapper(model)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        args.remove_unused_columns = False  # the collator reads the caption column itself
        kwargs.setdefault("data_collator", ConditionAlignmentCollator(processing_class, text_tokenizer, caption_column,
                                                                      target_length))
        use_cache = config.__dict__.get("use_cache", _UNSET)
        super().__init__(model=model, args=args, processing_class=processing_class, **kwargs)
        # Trainer writes args.use_cache into the model's config, and so into the saved one; this loss never
        # caches (the LLM runs with use_cache=False), so the model keeps the setting it came with.
        if use_cache is _UNSET:
            del config.use_cache
        else:
            config.use_cache = use_cache

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        target_ids = inputs["target_input_ids"]
        if next(self.text_encoder.parameters()).device != target_ids.device:
            self.text_encoder.to(target_ids.device)
        deem = self.accelerator.unwrap_model(model)
        with torch.no_grad():
            targets = self.text_encoder(target_ids).last_hidden_state[:, : deem.config.num_image_tokens]
        with self.accelerator.autocast():  # --bf16/--fp16: accelerate autocasts forward, which this loss bypasses
            condition = deem.prompt_conditions(inputs["input_ids"], inputs["attention_mask"], with_grad=True)
        loss = F.mse_loss(condition.float(), targets.float())
        return (loss, {"condition": condition}) if return_outputs else loss

    def prediction_step(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[torch.Tensor, None, None]:
        """Evaluation's loss is the same MSE (the batches have no `labels` for Trainer's default to find)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            return self.compute_loss(model, inputs).detach(), None, None


def load_text_encoder(diffusion_model: str | Path) -> tuple[CLIPTextModel, Any]:
    """The text encoder and tokenizer of a diffusers Stable Diffusion folder (or hub id)."""
    return (CLIPTextModel.from_pretrained(str(diffusion_model), subfolder="text_encoder"),
            AutoTokenizer.from_pretrained(str(diffusion_model), subfolder="tokenizer"))


def diffusion_model_path(model_path: str | Path, config: Any) -> str:
    """The model's `diffusion_model_name_or_path`, read relative to the model's folder when it names one there
    (shipped folders keep their parts beside the weights, as `stage0/sd`); otherwise as given (a folder or hub id)."""
    name = getattr(config, "diffusion_model_name_or_path", None)
    if not name:
        raise ValueError("The model's config names no diffusion model; pass --diffusion_model_name_or_path.")
    local = Path(model_path) / name
    return str(local) if local.is_dir() else name


@dataclass
class AlignmentArguments:
    model_name_or_path: str = field(metadata={"help": "A saved DEEM folder (or hub id) with an image decoder."})
    captions: str = field(metadata={"help": "A json/jsonl/csv/parquet file of captions, or a .txt with one a line."})
    caption_column: str = field(default="caption", metadata={"help": "The captions' column (a .txt's is 'text')."})
    diffusion_model_name_or_path: str | None = field(default=None, metadata={
        "help": "The Stable Diffusion folder whose text encoder is the target; defaults to the model config's."})


def load_captions(path: str | Path) -> Dataset:
    """A caption file as a `datasets` Dataset, by its extension."""
    path = Path(path)
    kinds = {**DATA_FILE_KINDS, ".txt": "text"}
    if path.suffix not in kinds:
        raise ValueError(f"Captions must be one of {sorted(kinds)} files, got {str(path)!r}.")
    if not path.is_file():
        raise FileNotFoundError(f"No caption file at {str(path)!r}.")
    return load_dataset(kinds[path.suffix], data_files=str(path), split="train")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser((AlignmentArguments, TrainingArguments))
    alignment, training = parser.parse_args_into_dataclasses(args=argv if argv is not None else sys.argv[1:])
    captions = load_captions(alignment.captions)
    if alignment.caption_column not in captions.column_names:
        raise ValueError(f"{alignment.captions!r} has no {alignment.caption_column!r} column (it has "
                         f"{captions.column_names}); set --caption_column.")
    bad = [i for i, c in enumerate(captions[alignment.caption_column]) if not isinstance(c, str) or not c.strip()]
    if bad:
        raise ValueError(f"{alignment.captions!r} has {len(bad)} empty or missing captions (rows {bad[:5]}).")
    set_seed(training.seed)
    model = DeemForConditionalGeneration.from_pretrained(alignment.model_name_or_path)
    diffusion = alignment.diffusion_model_name_or_path or diffusion_model_path(alignment.model_name_or_path,
                                                                              model.config)
    try:
        text_encoder, text_tokenizer = load_text_encoder(diffusion)
    except OSError as error:
        raise OSError(f"No text encoder and tokenizer at {diffusion!r} (subfolders text_encoder/ and tokenizer/); "
                      "pass --diffusion_model_name_or_path a Stable Diffusion folder or hub id.") from error
    trainer = ConditionAlignmentTrainer(model, training, text_encoder=text_encoder, text_tokenizer=text_tokenizer,
                                        caption_column=alignment.caption_column, train_dataset=captions)
    metrics = trainer.train().metrics
    trainer.save_model()
    return metrics


if __name__ == "__main__":
    main()
