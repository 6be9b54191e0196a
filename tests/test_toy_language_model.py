"""The toy world's language model (stage 0): trains, saves as a transformers LLaMA folder with the toy tokenizer
and DEEM's chat template, loads back, and reproduces itself bit for bit under its seed."""

import json
import math

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from toyworld import language_model as toy_lm


def test_toy_lm_trains_saves_loads_back_and_is_reproducible(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-for-bit comparisons hold at a fixed thread count
    try:
        first = toy_lm.train(tmp_path / "a", steps=3, batch_size=4, num_rows=8, log_every=0)
        toy_lm.train(tmp_path / "b", steps=3, batch_size=4, num_rows=8, log_every=0)
    finally:
        torch.set_num_threads(threads)
    assert first == {**json.loads((tmp_path / "a" / "report.json").read_text())}
    assert math.isfinite(first["held_out_perplexity"]) and first["parameters"] < 1_000_000
    a, b = (load_file(tmp_path / run / "model.safetensors") for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same seed, same weights

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert model.config.model_type == "llama" and model.config.vocab_size >= len(tokenizer) + 2  # room for DEEM's
    assert tokenizer.chat_template and "## ASSISTANT:" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
