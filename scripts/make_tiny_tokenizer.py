"""Trains the tiny byte-level BPE tokenizer of hub_configs/deem-tiny and writes the tiny processor there.

The corpus is the project's own text (prompt presets, chat roles, colour/shape/object words), so the tokenizer
is small, deterministic and needs no download. Run: .venv/bin/python scripts/make_tiny_tokenizer.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from modeling_deem.config_only_folder import drop_code_copies  # noqa: E402
from modeling_deem.tiny import TINY_SPECIAL_TOKENS, TINY_VOCAB_SIZE  # noqa: E402
from processing import DeemImageProcessor, DeemProcessor  # noqa: E402
from processing.prompts_deem import PROMPT_PRESETS, SYSTEM_PROMPT  # noqa: E402

COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
SHAPES = ["square", "circle", "triangle", "stripe", "cross", "dot"]
OBJECTS = ["cat", "dog", "car", "person", "bird", "tree", "cup", "chair", "boat", "horse", "bus", "bottle"]


def corpus() -> list[str]:
    lines = [SYSTEM_PROMPT, "## USER:", "## ASSISTANT:", "yes", "no", "Yes", "No", "a photo of", "A photo of"]
    for template, prefix in PROMPT_PRESETS.values():
        lines.append(template.replace("{question}", "what colour is the shape?").replace("{object}", "a cat"))
        lines.append(prefix)
    for colour in COLOURS:
        for shape in SHAPES:
            lines.append(f"A photo of a {colour} {shape}. The {shape} is {colour}.")
    for obj in OBJECTS:
        lines.append(f"Is there a {obj} in the image? There is a {obj} on the left of the {obj}.")
    lines += [f"{n} {n + 1} {n * 2}" for n in range(20)]
    return lines * 3


def build_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE, special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    bos = TINY_SPECIAL_TOKENS.index("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens=["<|startofimage|>", "<|sniffer|>"],
    )


def main() -> None:
    folder = ROOT / "hub_configs" / "deem-tiny"
    tokenizer = build_tokenizer()
    ids = [tokenizer.convert_tokens_to_ids(t) for t in TINY_SPECIAL_TOKENS]
    if ids != list(range(len(TINY_SPECIAL_TOKENS))) or len(tokenizer) > TINY_VOCAB_SIZE:
        raise RuntimeError(f"tiny tokenizer ids {ids} / size {len(tokenizer)} do not fit the tiny model")
    processor = DeemProcessor(DeemImageProcessor(size=64, decoder_size=32), tokenizer)
    processor.save_pretrained(folder)
    drop_code_copies(folder, sort_keys=True)  # configs only: the package provides the classes
    print(f"tiny tokenizer: {len(tokenizer)} tokens; processor written to {folder}")


if __name__ == "__main__":
    main()
