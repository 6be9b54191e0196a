"""P2 VQA: what DEEM's `generate` with an image costs next to the plainest way to do the same work, and next to
transformers' own LLaVA with the same LLM.

Arms, interleaved per (config, batch size) in one process, greedy, the same number of new tokens in every arm:
  DEEM generate             `model.generate(input_ids, attention_mask, pixel_values)` (MMFS as configured)
  DEEM generate, no MMFS    the same model built with mmfs=False (every other weight shared)
  features + LLM generate   the no-MMFS model's `get_image_features` once, the image tokens spliced into the
                            prompt's embeddings (with the <|startofimage|> vector) by hand, then the plain LLM's
                            own `generate(inputs_embeds=...)`: the floor for DEEM's generate path
  LLaVA generate            `LlavaForConditionalGeneration` holding the same LLM weights, its image as 77 tokens
                            (a small Pixtral vision tower on a 7 × 11 patch grid, LLaVA's `image_sizes` path)
  DEEM / LLaVA encoder      `get_image_features` alone, so the LLM part of each can be compared
The three DEEM arms must produce the same tokens (MMFS's gate starts at 0), which is checked. Target: DEEM
generate (no MMFS) ≤ 1.05 × features + LLM generate. MMFS's own work is the gap between the first two rows.

    python -m benchmarks.vqa [--configs tiny bench] [--batch-sizes 1 8] [--new-tokens 16] [--rounds 9] [--profile]
    python -m benchmarks.vqa --configs tiny --batch-sizes 1 --rounds 1 --new-tokens 2     # CI smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import (
    build_model,
    command_line,
    config_label,
    image_slot,
    load_config,
    machine,
    medians,
    op_gap,
    print_op_gap,
    print_table,
    ratio_stats,
    run_interleaved,
    setup_threads,
    text_ids,
    write_json,
)
from modeling_deem import DeemConfig, DeemForConditionalGeneration

PATCH_GRID = (7, 11)  # 77 image tokens for LLaVA


def vqa_prompt(config: DeemConfig, lead: int = 12, question: int = 24) -> list[int]:
    """`<s>` lead sentence, the image, the question (the paper's Figure 8 layout): 115 tokens."""
    return [config.bos_token_id] + text_ids(config, lead) + image_slot(config) + text_ids(config, question, lead)


def build_llava(deem: DeemForConditionalGeneration) -> torch.nn.Module:
    """transformers' LLaVA with the DEEM model's LLM weights (embeddings, layers, norm, LM head)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, PixtralVisionConfig

    text = deem.config.text_config
    width = max(32, text.hidden_size // 2)
    vision = PixtralVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                                 num_attention_heads=max(1, width // 32), head_dim=min(32, width),
                                 patch_size=16, image_size=16 * max(PATCH_GRID))
    config = LlavaConfig(vision_config=vision, text_config=text.to_dict(), image_token_id=deem.config.image_token_id,
                         vision_feature_select_strategy="full", vision_feature_layer=-1,
                         image_seq_length=deem.config.num_image_tokens, tie_word_embeddings=False)
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(config).eval()
    llava.model.language_model.load_state_dict(deem.language_model.get_decoder().state_dict())
    llava.lm_head.load_state_dict(deem.language_model.get_output_embeddings().state_dict())
    return llava


def spliced_embeddings(model: DeemForConditionalGeneration, prompt: torch.Tensor, features: Any) -> torch.Tensor:
    """The prompt's input embeddings as DEEM's forward makes them: the learned vector added at `<|startofimage|>`,
    the image tokens in place of the placeholders."""
    config = model.config
    embeds = model.get_input_embeddings()(prompt)
    starts = (prompt == config.image_start_token_id).unsqueeze(-1).to(embeds.dtype)
    embeds = embeds + starts * model.image_start_embedding.weight[0]
    slots = (prompt == config.image_token_id).unsqueeze(-1).expand_as(embeds)
    return embeds.masked_scatter(slots, features.image_embeds.reshape(-1, embeds.shape[-1]))


def plain_copy(model: DeemForConditionalGeneration) -> DeemForConditionalGeneration:
    """The same model without MMFS: every weight the two have in common copied over."""
    config = DeemConfig.from_dict({**model.config.to_dict(), "mmfs": False})
    plain = DeemForConditionalGeneration(config).eval()
    missing, _ = plain.load_state_dict(model.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"the no-MMFS copy lacks weights: {missing[:5]}")
    return plain


def measure(config_name: str, batch_size: int, args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(config_name, with_image_decoder=False)  # answering never touches the image decoder
    model = build_model(config)
    plain = plain_copy(model)
    llava = build_llava(plain)
    prompt = torch.tensor([vqa_prompt(config)] * batch_size)
    mask = torch.ones_like(prompt)
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch_size, 3, size, size, generator=generator)
    llava_pixels = torch.randn(batch_size, 3, 16 * PATCH_GRID[0], 16 * PATCH_GRID[1], generator=generator)
    image_sizes = torch.tensor([[16 * PATCH_GRID[0], 16 * PATCH_GRID[1]]] * batch_size)
    greedy = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False,
              "num_beams": 1, "pad_token_id": config.pad_token_id}
    outputs: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def deem_generate(which: DeemForConditionalGeneration, key: str) -> None:
        generated = which.generate(input_ids=prompt, attention_mask=mask, pixel_values=pixels, **greedy)
        outputs[key] = generated[:, prompt.shape[1]:]

    @torch.no_grad()
    def features_then_llm() -> None:
        embeds = spliced_embeddings(plain, prompt, plain.get_image_features(pixels, return_dict=True))
        outputs["plain"] = plain.language_model.generate(inputs_embeds=embeds, attention_mask=mask, **greedy)

    @torch.no_grad()
    def llava_generate() -> None:
        llava.generate(input_ids=prompt, attention_mask=mask, pixel_values=llava_pixels, image_sizes=image_sizes,
                       **greedy)

    @torch.no_grad()
    def deem_encoder() -> None:
        plain.get_image_features(pixels, return_dict=True)

    @torch.no_grad()
    def llava_encoder() -> None:
        llava.get_image_features(pixel_values=llava_pixels, image_sizes=image_sizes, vision_feature_layer=-1,
                                 vision_feature_select_strategy="full")

    arms = {
        "DEEM generate": lambda: deem_generate(model, "deem"),
        "DEEM generate, no MMFS": lambda: deem_generate(plain, "deem_plain"),
        "features + LLM generate": features_then_llm,
        "LLaVA generate": llava_generate,
        "DEEM encoder": deem_encoder,
        "LLaVA encoder": llava_encoder,
    }
    times = run_interleaved(arms, args.rounds)
    same = torch.equal(outputs["deem"], outputs["plain"]) and torch.equal(outputs["deem_plain"], outputs["plain"])
    if not same:
        raise AssertionError("DEEM's generate and the plain LLM's generate disagree on the tokens")
    med = medians(times)
    floor = "features + LLM generate"
    llm_part = {"DEEM": med["DEEM generate, no MMFS"] - med["DEEM encoder"],
                "LLaVA": med["LLaVA generate"] - med["LLaVA encoder"]}
    result = {
        "config": config_label(config_name), "batch_size": batch_size, "prompt_tokens": prompt.shape[1],
        "new_tokens": args.new_tokens, "median_s": med, "runs_s": times, "same_tokens": same,
        "deem_over_floor": ratio_stats(times["DEEM generate"], times[floor]),
        "deem_no_mmfs_over_floor": ratio_stats(times["DEEM generate, no MMFS"], times[floor]),
        "deem_no_mmfs_over_llava": ratio_stats(times["DEEM generate, no MMFS"], times["LLaVA generate"]),
        "llm_part_s": llm_part, "llm_part_deem_over_llava": llm_part["DEEM"] / llm_part["LLaVA"],
    }
    if args.profile:
        result["op_gap"] = {"DEEM generate, no MMFS vs floor": op_gap(arms["DEEM generate, no MMFS"], arms[floor]),
                            "DEEM generate vs no MMFS": op_gap(arms["DEEM generate"], arms["DEEM generate, no MMFS"])}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "bench"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="torch.profiler: where DEEM spends more than the floor")
    parser.add_argument("--output", default="outputs/benchmarks/vqa.json")
    args = parser.parse_args()
    setup_threads(args.threads)
    results = [measure(name, batch, args) for name in args.configs for batch in args.batch_sizes]
    rows = []
    for r in results:
        med = r["median_s"]
        rows.append([f"{r['config']} b{r['batch_size']}", med["DEEM generate"], med["DEEM generate, no MMFS"],
                     med["features + LLM generate"], med["LLaVA generate"],
                     f"×{r['deem_no_mmfs_over_floor']['median']:.3f} (min ×{r['deem_no_mmfs_over_floor']['min']:.3f})",
                     f"×{r['deem_over_floor']['median']:.3f}", f"×{r['llm_part_deem_over_llava']:.3f}"])
    print_table(["config, batch", "DEEM gen s", "DEEM no-MMFS s", "feats+LLM s", "LLaVA s",
                 "no-MMFS / floor", "DEEM / floor", "LLM part / LLaVA's"], rows,
                f"VQA, {results[0]['prompt_tokens']}-token prompt with one image (77 tokens), {args.new_tokens} new "
                f"tokens, greedy, median CPU s of {args.rounds} interleaved rounds, {args.threads} thread; same "
                "tokens in every DEEM arm")
    met = all(r["deem_no_mmfs_over_floor"]["median"] <= 1.05 for r in results)
    print(f"target DEEM generate (no MMFS) ≤ 1.05 × floor: {'met' if met else 'MISSED'} "
          "(LLM part = generate − that model's encoder alone)")
    for r in results:
        for name, gap in r.get("op_gap", {}).items():
            print_op_gap(f"{r['config']} b{r['batch_size']}, {name}", gap)
    write_json(args.output, {"command": command_line(), "machine": machine(args.threads), "results": results,
                             "target_met": met})


if __name__ == "__main__":
    main()
