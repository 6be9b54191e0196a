"""P6 growth: how the cost grows with the input.

1. Stage-I step time (forward, backward, AdamW) vs images per sample (1, 2, 4; 20 text tokens before each image,
   so the sequence grows too: 120, 218, 414 tokens), each image giving one NIP and one CSR UNet sample.
2. Stage-I step time vs sequence length at 2 images per sample (more text after the last image).
3. Generation: CPU time per new token vs prompt length (one image, then text), from two arms per length: the
   prompt + 1 token and the prompt + 1 + N tokens; per token = difference / N. Greedy, batch 1.
Each series' arms are interleaved in one process (order rotated and reversed per round); FLOPs per step (torch's
FlopCounterMode, forward and backward) show how far time follows compute: time ratio / FLOP ratio = 1 is linear.

    python -m benchmarks.growth [--config bench] [--images 1 2 4] [--lengths 218 436 872]
        [--prompt-lengths 128 512 1024 2048] [--rounds 5]
    python -m benchmarks.growth --config tiny --images 1 2 --lengths 218 300 --prompt-lengths 100 200 --rounds 1 --new-tokens 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import (
    BATCH_ROWS,
    build_model,
    command_line,
    config_label,
    count_flops,
    document_row,
    image_slot,
    load_config,
    machine,
    medians,
    print_table,
    run_interleaved,
    setup_threads,
    text_ids,
    training_batch,
    write_json,
)

ROWS = BATCH_ROWS


def step_arms(config: Any, rows_by_arm: dict[str, list[int]]) -> tuple[dict[str, Any], dict[str, int]]:
    model = build_model(config, "stage1")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    arms, tokens = {}, {}
    for name, row in rows_by_arm.items():
        batch = training_batch(config, [row] * ROWS)
        tokens[name] = len(row)

        def step(batch: dict[str, torch.Tensor] = batch) -> None:
            optimizer.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            optimizer.step()

        arms[name] = step
    return arms, tokens


def series(title: str, arms: dict[str, Any], tokens: dict[str, int], rounds: int) -> dict[str, Any]:
    times = run_interleaved(arms, rounds)
    torch.manual_seed(0)
    flops = {name: count_flops(arm) for name, arm in arms.items()}
    med = medians(times)
    first = next(iter(arms))
    rows = []
    for name in arms:
        time_ratio, flop_ratio = med[name] / med[first], flops[name] / flops[first]
        rows.append([name, tokens[name], med[name], time_ratio, flop_ratio, time_ratio / flop_ratio])
    print_table(["arm", "tokens/row", "median CPU s", f"× {first}", "FLOPs ×", "time × / FLOPs ×"], rows, title)
    print()
    return {"median_s": med, "runs_s": times, "flops": flops, "tokens_per_row": tokens}


def generation(config: Any, lengths: list[int], new_tokens: int, rounds: int) -> dict[str, Any]:
    """Per new token vs prompt length, for DEEM's generate and for the floor of benchmarks.vqa (the no-MMFS copy's
    image features spliced into the embeddings by hand, then the plain LLM's own generate)."""
    from benchmarks.vqa import plain_copy, spliced_embeddings

    model = build_model(load_config_like(config, with_image_decoder=False))
    plain = plain_copy(model)
    size = config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    arms = {}
    for length in lengths:
        lead = 10
        rest = length - 1 - lead - len(image_slot(config))
        if rest < 1:
            raise ValueError(f"prompt length {length} is too short for an image")
        prompt = torch.tensor([[config.bos_token_id] + text_ids(config, lead) + image_slot(config)
                               + text_ids(config, rest, lead)])
        mask = torch.ones_like(prompt)
        for count in (1, 1 + new_tokens):
            settings = {"max_new_tokens": count, "min_new_tokens": count, "do_sample": False, "num_beams": 1,
                        "pad_token_id": config.pad_token_id}

            @torch.no_grad()
            def deem(prompt: torch.Tensor = prompt, mask: torch.Tensor = mask, settings: dict = settings) -> None:
                model.generate(input_ids=prompt, attention_mask=mask, pixel_values=pixels, **settings)

            @torch.no_grad()
            def floor(prompt: torch.Tensor = prompt, mask: torch.Tensor = mask, settings: dict = settings) -> None:
                embeds = spliced_embeddings(plain, prompt, plain.get_image_features(pixels, return_dict=True))
                plain.language_model.generate(inputs_embeds=embeds, attention_mask=mask, **settings)

            arms[f"DEEM {length}+{count}"] = deem
            arms[f"floor {length}+{count}"] = floor
    times = run_interleaved(arms, rounds)
    per_token: dict[str, dict[int, dict[str, float]]] = {"DEEM": {}, "floor": {}}
    for which in per_token:
        for length in lengths:
            long, short = times[f"{which} {length}+{1 + new_tokens}"], times[f"{which} {length}+1"]
            differences = [(a - b) / new_tokens for a, b in zip(long, short)]
            per_token[which][length] = {"median_ms": 1e3 * statistics.median(differences),
                                        "prefill_s": statistics.median(short)}
    first = lengths[0]
    deem, floor = per_token["DEEM"], per_token["floor"]
    print_table(["prompt tokens", "DEEM prefill+1 s", "DEEM ms/token", f"× at {first}", "floor ms/token",
                 f"× at {first}", "DEEM / floor"],
                [[length, deem[length]["prefill_s"], deem[length]["median_ms"],
                  deem[length]["median_ms"] / deem[first]["median_ms"], floor[length]["median_ms"],
                  floor[length]["median_ms"] / floor[first]["median_ms"],
                  deem[length]["median_ms"] / floor[length]["median_ms"]] for length in lengths],
                f"generation: CPU ms per new token vs prompt length (1 image, batch 1, greedy, {new_tokens} new tokens "
                f"= (prompt+{1 + new_tokens} − prompt+1) / {new_tokens}, {rounds} rounds; floor = image features + the "
                "plain LLM's generate, no MMFS)")
    print()
    return {"per_token": per_token, "runs_s": times, "new_tokens": new_tokens}


def load_config_like(config: Any, **overrides: Any) -> Any:
    from modeling_deem import DeemConfig

    return DeemConfig.from_dict({**config.to_dict(), **overrides})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="bench")
    parser.add_argument("--images", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--lengths", nargs="+", type=int, default=[218, 436, 872])
    parser.add_argument("--prompt-lengths", nargs="+", type=int, default=[128, 512, 1024, 2048])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="outputs/benchmarks/growth.json")
    args = parser.parse_args()
    setup_threads(args.threads)
    config = load_config(args.config)
    label = config_label(args.config)
    result: dict[str, Any] = {"command": command_line(), "machine": machine(args.threads), "config": label,
                              "rounds": args.rounds, "rows_per_step": ROWS}
    arms, tokens = step_arms(config, {f"{k} image{'s' if k > 1 else ''}": document_row(config, k)
                                      for k in args.images})
    result["images"] = series(f"{label} stage-I step vs images per sample ({ROWS} rows; 20 text tokens before each "
                              f"image; each image = 1 NIP + 1 CSR UNet sample)", arms, tokens, args.rounds)
    base = len(document_row(config, 2))
    rows = {}
    for length in args.lengths:
        if length < base:
            raise ValueError(f"sequence length {length} is shorter than the 2-image document ({base})")
        rows[f"{length} tokens"] = document_row(config, 2, tail=20 + length - base)
    arms, tokens = step_arms(config, rows)
    result["length"] = series(f"{label} stage-I step vs sequence length ({ROWS} rows, 2 images each)", arms, tokens,
                              args.rounds)
    result["generation"] = generation(config, args.prompt_lengths, args.new_tokens, args.rounds)
    write_json(args.output, result)


if __name__ == "__main__":
    main()
