"""The toy world's tokenizer: a byte-level BPE trained on the world's own text, shared by its three stage-0 parts.

The trained BPE is committed (`toy_tokenizer.json`) and every part loads it: the `tokenizers` BPE trainer breaks
ties between equally frequent pairs in hash-map order, which changes from process to process, so two trainings on
this corpus number (and even split) tokens differently, and stage-0 parts trained in separate processes would not
be reproducible bit for bit. `python -m toyworld.tokenizer --output toyworld/toy_tokenizer.json` retrains it.

Its corpus is every word the world can say (captions of every medium, questions, answers, POPE and RobustVQA
prompts, the paper's prompt presets and chat format), so the whole vocabulary fits in ~700 tokens and
most words are one token. Two flavours of the same vocabulary: the language model's (`<s>` before a text, as
LLaMA's) and the text encoders' (`<s> text </s>`, whose `</s>` the CLIP text tower pools).
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from processing.prompts_deem import PROMPT_PRESETS, SYSTEM_PROMPT

from .datasets import MEDIUM
from .scene import BACKGROUNDS, COLOURS, PLURALS, POSITIONS, SHAPES, SIZE_BINS, sample_scene
from .text import DESCRIBE_PROMPTS, NUMBERS, caption, conversation, questions

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
TEMPLATE_WEIGHT = 1000
VOCAB_SIZE = 1020  # the language model's embedding has 1024 rows: DEEM's <|startofimage|> and <|sniffer|> fit


def corpus(num_scenes: int = 400, seed: int = 0) -> list[str]:
    """Every kind of sentence the world produces, over a seeded sample of scenes, plus the word lists."""
    rng = random.Random(f"toyworld:tokenizer:{seed}")
    fixed = [SYSTEM_PROMPT, "\n## USER:", "\n## ASSISTANT:", "yes", "no", "Yes", "No", *DESCRIBE_PROMPTS]
    for template, prefix in PROMPT_PRESETS.values():
        for shape in SHAPES:
            fixed.append(template.replace("{question}", f"What colour is the {shape}?").replace("{object}", shape))
        fixed.append(prefix)
    # The chat format and the paper's prompts come once per turn, as often as a scene's own sentences: weighted
    # so, BPE gives their words tokens of their own. Counted once, they were spelled out byte by byte, which made
    # a Figure 8 turn ~100 tokens, put the image ~60 tokens before its answer, and slowed learning to read it.
    lines = fixed * TEMPLATE_WEIGHT
    words = [*SHAPES, *PLURALS.values(), *COLOURS, *BACKGROUNDS, *POSITIONS, *(n for n, _ in SIZE_BINS),
             *NUMBERS.values(), *(str(n) for n in range(10))]
    lines += [" ".join(words), " ".join(w.capitalize() for w in words)]
    for _ in range(num_scenes):
        scene = sample_scene(rng)
        for medium in {*MEDIUM.values(), "picture"}:
            lines.append(caption(scene, rng, medium))
        lines += [f"{qa.question} {qa.answer}" for qa in questions(scene, rng)]
        lines += [turn["value"] for turn in conversation(scene, rng)]
    return lines


BPE_FILE = Path(__file__).with_name("toy_tokenizer.json")


def train_bpe() -> str:
    """A freshly trained BPE as JSON (its token numbering varies between processes, see the module docstring)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    return tokenizer.to_str()


@functools.cache
def _trained_bpe() -> str:
    """The committed BPE as JSON (read once a process)."""
    if not BPE_FILE.is_file():
        raise FileNotFoundError(f"{BPE_FILE} is missing: retrain it with python -m toyworld.tokenizer --output {BPE_FILE}")
    return BPE_FILE.read_text()


def build(for_text_encoder: bool = False, bpe: str | None = None) -> PreTrainedTokenizerFast:
    """The toy tokenizer (a fresh object each call); `for_text_encoder` appends `</s>`; `bpe`: another trained BPE
    (JSON, e.g. `train_bpe()`) instead of the committed one."""
    tokenizer = Tokenizer.from_str(bpe if bpe is not None else _trained_bpe())
    bos, eos = SPECIAL_TOKENS.index("<s>"), SPECIAL_TOKENS.index("</s>")
    single = "<s> $A </s>" if for_text_encoder else "<s> $A"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=f"{single} $B", special_tokens=[("<s>", bos), ("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>", model_max_length=1024)


def save(folder: str | Path, for_text_encoder: bool = False) -> PreTrainedTokenizerFast:
    tokenizer = build(for_text_encoder)
    tokenizer.save_pretrained(folder)
    return tokenizer


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m toyworld.tokenizer", description="Retrain the toy BPE.")
    parser.add_argument("--output", required=True, help="where to write it (toyworld/toy_tokenizer.json is the one "
                        "the stage-0 parts load; replacing it changes every part trained afterwards)")
    args = parser.parse_args(argv)
    Path(args.output).write_text(train_bpe() + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
