"""Stage 0 of the toy world: its "Vicuna", the causal language model DEEM takes as given.

A small LLaMA trained on the world's text alone (never an image): captions of every medium, and chat turns in
the paper's format (system prompt, `## USER:` / `## ASSISTANT:`) asking the world's questions with their answers,
partly in the Figure 8 layout ("Based on the image, ..." / "The answer is ..."). It learns the language and the
answer formats, and what a blind guesser can (the most common answers); seeing is DEEM's job. Saved with
`save_pretrained` (safetensors) plus the toy tokenizer and the chat template, and loaded back through
`AutoModelForCausalLM`, i.e. `DeemForConditionalGeneration.from_components(language_model=<folder>, ...)`.

    python -m toyworld.language_model --output-dir outputs/toy/lm
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, get_cosine_schedule_with_warmup

from processing.prompts_deem import CHAT_TEMPLATE

from .datasets import MEDIUM, base_scene, rng_for
from .text import caption, conversation, paper_conversation
from .tokenizer import build as build_tokenizer

LM_CONFIG = {"vocab_size": 1024, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
             "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3, "tie_word_embeddings": False}
IMAGE_MARKER = "<image>"


def documents(index: int, seed: int = 0, split: str = "train") -> list[str]:
    """Row `index`'s texts: a caption, a LLaVA-style chat and a Figure-8-style chat, image markers removed."""
    scene = base_scene(index, seed, split)
    rng = rng_for("lm", seed, split, index)
    texts = [caption(scene, rng, rng.choice([*MEDIUM.values(), "picture"]))]
    chats = [[{"role": "user" if turn["from"] == "human" else "assistant", "content": turn["value"]}
              for turn in make(scene, rng)] for make in (conversation, paper_conversation)]
    for messages in chats:
        for message in messages:
            message["content"] = " ".join(message["content"].replace(IMAGE_MARKER, " ").split())
        texts.append(_render_chat(messages))
    return texts


@functools.cache
def _chat_template() -> Any:
    from jinja2 import Template

    return Template(CHAT_TEMPLATE)


def _render_chat(messages: list[dict[str, str]]) -> str:
    return _chat_template().render(messages=messages, add_generation_prompt=False)


def _batches(tokenizer: Any, texts: list[str], batch_size: int, rng: random.Random) -> list[dict[str, torch.Tensor]]:
    order = list(range(len(texts)))
    rng.shuffle(order)
    out = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        enc = tokenizer([texts[i] for i in order[start : start + batch_size]], padding=True, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        out.append({**enc, "labels": labels})
    return out


@torch.no_grad()
def perplexity(model: LlamaForCausalLM, tokenizer: Any, texts: list[str], batch_size: int = 32) -> float:
    """exp(mean next-token loss per predicted token) over `texts`."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start : start + batch_size], padding=True, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        tokens = int((labels[:, 1:] != -100).sum())
        total += float(model(**enc, labels=labels).loss) * tokens
        count += tokens
    return math.exp(total / count)


def train(output_dir: str | Path, steps: int = 400, batch_size: int = 32, lr: float = 2e-3, seed: int = 0,
          num_rows: int = 4000, log_every: int = 100) -> dict[str, Any]:
    """Next-token training on the world's text; saves the model, tokenizer and chat template, and a report."""
    torch.manual_seed(seed)
    rng = random.Random(f"toyworld:lm:{seed}")
    output_dir = Path(output_dir)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    texts = [text for i in range(num_rows) for text in documents(i, seed, "train")]
    held_out = [text for i in range(200) for text in documents(i, seed, "test")]
    model = LlamaForCausalLM(LlamaConfig(**LM_CONFIG))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    start, losses, batches = time.time(), [], []
    initial_perplexity = perplexity(model, tokenizer, held_out)
    model.train()
    for step in range(steps):
        if not batches:
            batches = _batches(tokenizer, texts, batch_size, rng)
        loss = model(**batches.pop()).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps} loss {sum(losses[-log_every:]) / log_every:.3f}", flush=True)
    model.eval()
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    prompt = _render_chat([{"role": "user", "content": "How many objects are there?"}]) + "\n## ASSISTANT:"
    sample = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=8, do_sample=False)
    report = {"steps": steps, "batch_size": batch_size, "seed": seed, "seconds": round(time.time() - start, 1),
              "parameters": sum(p.numel() for p in model.parameters()), "first_loss": losses[0],
              "last_loss": sum(losses[-20:]) / min(20, len(losses)),
              "held_out_perplexity": perplexity(model, tokenizer, held_out),
              "untrained_perplexity": initial_perplexity,
              "sample": tokenizer.decode(sample[0], skip_special_tokens=False)}
    (output_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def load(folder: str | Path) -> LlamaForCausalLM:
    return AutoModelForCausalLM.from_pretrained(folder)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m toyworld.language_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = train(args.output_dir, args.steps, args.batch_size, args.lr, args.seed)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
