"""Train DEEM in the style of transformers' examples: model, data and training arguments, plus `--stage`.

    python -m trainers.train_deem --stage stage1 --config_name hub_configs/deem-tiny \
        --dataset shapes --output_dir outputs/stage1 --max_steps 20 --use_cpu
    python -m trainers.train_deem --stage stage2 --model_name_or_path outputs/stage1 \
        --dataset path/to/llava.jsonl --data_format llava --image_root path/to/images --output_dir outputs/stage2

Every `TrainingArguments` field not given on the command line takes the stage recipe's value (paper Table 12);
what you give wins. Multi-process: `accelerate launch --multi_gpu --num_processes N -m trainers.train_deem ...`
or `torchrun --nproc_per_node N -m trainers.train_deem ...` (see the README for DeepSpeed / FSDP).
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, IterableDataset, load_dataset, load_from_disk
from PIL import Image
from transformers import HfArgumentParser, TrainingArguments, set_seed

from modeling_deem import DeemConfig, DeemForConditionalGeneration
from processing import DeemProcessor

from .collator import DeemDataCollator
from .data_builders import DATA_FILE_KINDS, image_text_pair_row, llava_conversation_row
from .deem_trainer import DeemTrainer
from .lora import lora_on_language_model
from .packing import DeemPackingCollator
from .stages import STAGES, StageRecipe
from .synthetic_data import make_shapes_dataset


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "A saved DEEM folder (or hub id)."})
    config_name: str | None = field(default=None, metadata={"help": "A DeemConfig folder to build a new model from."})
    processor_name_or_path: str | None = field(default=None, metadata={"help": "Defaults to the model/config folder."})
    lora_r: int = field(default=0, metadata={"help": "> 0: LoRA of this rank on the LLM's attention (peft)."})
    lora_alpha: int = field(default=16)
    dtype: str = field(default="auto", metadata={
        "help": "Weights' dtype when loading --model_name_or_path: 'auto' (the checkpoint's) or a torch dtype name.",
        "choices": ["auto", "float32", "bfloat16", "float16"]})


@dataclass
class DataArguments:
    dataset: str = field(default="shapes", metadata={"help": "'shapes' (generated), a save_to_disk folder, a "
                                                              "json/jsonl/parquet file or a datasets name."})
    data_format: str = field(default="rows", metadata={"help": "rows | pairs | llava", "choices": ["rows", "pairs",
                                                                                                  "llava"]})
    image_root: str | None = field(default=None, metadata={"help": "Folder for image paths in the data."})
    streaming: bool = field(default=False)
    packing_max_length: int | None = field(default=None, metadata={"help": "Pack samples up to this many tokens."})
    max_train_samples: int | None = field(default=None)
    image_size: str = field(default="stage", metadata={
        "help": "Encoder input size: 'stage' (the recipe's: 256 in stage I, 448 after), 'processor' (the processor's "
                "own) or pixels."})
    crop: str = field(default="stage", metadata={
        "help": "Image geometry: 'stage' (the recipe's: center crop in stage I, the whole image after), 'processor', "
                "'random', 'center' or 'none'.", "choices": ["stage", "processor", "random", "center", "none"]})
    flip: str = field(default="stage", metadata={
        "help": "Random horizontal flip in training: 'stage' (off in every recipe), 'processor', 'yes' or 'no'.",
        "choices": ["stage", "processor", "yes", "no"]})


@dataclass
class StageArguments:
    stage: str = field(default="stage1", metadata={"choices": list(STAGES)})
    nip_loss_weight: float | None = field(default=None, metadata={"help": "λ_NIP (default: the stage's)."})
    csr_loss_weight: float | None = field(default=None, metadata={
        "help": "λ_CSR (default: the stage's; 0 trains without CSR, as the paper's ablations)."})
    learning_rate_multipliers: str | None = field(default=None, metadata={
        "help": "Multiply some parameter groups' recipe rates, e.g. 'language_model=10,mmfs=2' (see "
                "trainers.stages.PARAMETER_GROUPS); --learning_rate still scales every group alike."})

    def recipe(self) -> StageRecipe:
        """The stage's recipe with the loss weights and rate multipliers given on the command line."""
        weights = {name: value for name, value in (("nip_loss_weight", self.nip_loss_weight),
                                                   ("csr_loss_weight", self.csr_loss_weight)) if value is not None}
        if any(value < 0 for value in weights.values()):
            raise ValueError(f"Loss weights must be >= 0, got {weights}.")
        recipe = replace(STAGES[self.stage], **weights)
        return recipe.with_rate_multipliers(self.multipliers()) if self.learning_rate_multipliers else recipe

    def multipliers(self) -> dict[str, float]:
        """'group=factor,...' → {group: factor}; a part that is not `name=number` is refused by name."""
        parsed = {}
        for part in (p.strip() for p in (self.learning_rate_multipliers or "").split(",")):
            group, _, factor = part.partition("=")
            try:
                parsed[group.strip()] = float(factor)
            except ValueError:
                raise ValueError(f"--learning_rate_multipliers: {part!r} is not 'group=number'.") from None
        return parsed


def given_on_command_line(argv: list[str]) -> set[str]:
    return {arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--")}


def load_rows(data: DataArguments, seed: int) -> Dataset | IterableDataset:
    """The training rows in the collator's format (`text`/`messages`, `images`, `masks`)."""
    if data.dataset == "shapes":
        dataset: Dataset | IterableDataset = make_shapes_dataset(num_rows=data.max_train_samples or 256, seed=seed)
        return dataset.to_iterable_dataset() if data.streaming else dataset
    path = Path(data.dataset)
    if path.is_dir() and (path / "dataset_info.json").exists():
        dataset = load_from_disk(str(path))
    elif path.is_file():
        kind = DATA_FILE_KINDS.get(path.suffix)
        if kind is None:
            raise ValueError(f"Unsupported data file {path}: use .json, .jsonl, .parquet or .csv.")
        dataset = load_dataset(kind, data_files=str(path), split="train", streaming=data.streaming)
    else:
        dataset = load_dataset(data.dataset, split="train", streaming=data.streaming)
    if data.streaming and isinstance(dataset, Dataset):
        dataset = dataset.to_iterable_dataset()
    if data.max_train_samples is not None:
        dataset = dataset.take(data.max_train_samples) if isinstance(dataset, IterableDataset) else \
            dataset.select(range(min(data.max_train_samples, len(dataset))))
    rng = random.Random(seed)
    open_image = _image_opener(data.image_root)
    if data.data_format == "pairs":
        return dataset.map(lambda r: image_text_pair_row(open_image(r["image"]), r["caption"], rng),
                           remove_columns=dataset.column_names)
    if data.data_format == "llava":
        return dataset.map(lambda r: llava_conversation_row(r["conversations"], open_image(r.get("image"))),
                           remove_columns=dataset.column_names)
    if isinstance(dataset, Dataset) and "images" in dataset.column_names and data.image_root:
        return dataset.map(lambda r: {"images": [open_image(i) for i in r["images"]]})
    return dataset


def _image_opener(root: str | None):
    def open_image(value: Any) -> Image.Image | None:
        if value is None or isinstance(value, Image.Image):
            return value
        if isinstance(value, dict) and "bytes" in value:  # datasets' Image feature, not decoded
            import io

            return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
        image_path = Path(root) / value if root else Path(value)
        if not image_path.exists():
            raise FileNotFoundError(f"Image {image_path} does not exist (set --image_root?).")
        return Image.open(image_path).convert("RGB")

    return open_image


def build_model(args: ModelArguments, stage: str) -> DeemForConditionalGeneration:
    with_decoder = STAGES[stage].with_image_decoder
    if args.model_name_or_path:
        # A local folder by its absolute path: a LoRA output records it as its base, and must load from anywhere.
        source = args.model_name_or_path
        source = str(Path(source).resolve()) if Path(source).is_dir() else source
        dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
        model = DeemForConditionalGeneration.from_pretrained(source, with_image_decoder=with_decoder, dtype=dtype)
    elif args.config_name:
        model = DeemForConditionalGeneration(DeemConfig.from_pretrained(args.config_name,
                                                                        with_image_decoder=with_decoder))
    else:
        raise ValueError("Give --model_name_or_path (continue training) or --config_name (a new model).")
    if args.lora_r > 0:
        model = lora_on_language_model(model, stage, r=args.lora_r, alpha=args.lora_alpha)
    return model


def main(argv: list[str] | None = None) -> DeemTrainer:
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((ModelArguments, DataArguments, StageArguments, TrainingArguments))
    model_args, data_args, stage_args, training_args = parser.parse_args_into_dataclasses(argv)
    recipe = stage_args.recipe()
    # The stage recipe's values, overridden by whatever the command line set explicitly.
    fields = TrainingArguments.__dataclass_fields__
    explicit = {k: getattr(training_args, k) for k in given_on_command_line(argv) if k in fields and fields[k].init}
    explicit.pop("output_dir", None)
    training_args = recipe.training_arguments(training_args.output_dir, **explicit)
    set_seed(training_args.seed)

    model = build_model(model_args, stage_args.stage)
    processor = DeemProcessor.from_pretrained(
        model_args.processor_name_or_path or model_args.model_name_or_path or model_args.config_name)
    image_processor = processor.image_processor
    recipe.configure_processor(
        processor,
        image_size={"stage": None, "processor": image_processor.size}.get(data_args.image_size, data_args.image_size),
        crop={"stage": None, "processor": image_processor.crop}.get(data_args.crop, data_args.crop),
        flip={"stage": None, "processor": image_processor.flip, "yes": True, "no": False}[data_args.flip],
    )
    collator = DeemDataCollator(processor, decoder_views=recipe.with_image_decoder, seed=training_args.seed)
    if data_args.packing_max_length:
        collator = DeemPackingCollator(collator, max_length=data_args.packing_max_length)
    # The processor goes into every checkpoint and the output folder (Trainer's processing_class), so each of
    # them feeds pipeline(...) and `python -m evaluation` as it is.
    trainer = DeemTrainer(model=model, args=training_args, train_dataset=load_rows(data_args, training_args.seed),
                          data_collator=collator, stage=recipe, processing_class=processor)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()  # trainer_state.json: the log history with every loss part
    return trainer


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
