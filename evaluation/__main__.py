"""One command for every benchmark.

    python -m evaluation pope --model outputs/demo/checkpoint --data pope.jsonl [--limit N] [--batch-size B]
    python -m evaluation build-robustvqa --source A --images imagenet-a/ --output robustvqa_a.jsonl

Checks every row of the data (labels, options, pairs, images) before loading a model; prints a table like the
paper's Table 1 (skips counted per reason), writes per-sample predictions + summary as JSON and a bar chart of all
runs on the same data under --results-dir/<benchmark>/<data key>/ (see evaluation/result_keys.py). Several --model
flags evaluate several models side by side. Under `accelerate launch`, each process answers a shard and the main
process scores.
"""

from __future__ import annotations

import argparse
import os
import sys

from .benchmarks import BENCHMARKS


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "build-robustvqa":
        return build(argv[1:])
    if argv and argv[0] in ("mmvp-vlm", "winoground"):
        return matching(argv[0], argv[1:])
    if argv and argv[0] == "t2i":  # text-to-image: FID and CLIP score (evaluation/t2i.py)
        from .t2i import main as text_to_image

        return text_to_image(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    parser.add_argument("--model", action="append", required=True, help="folder or hub id; repeat to compare")
    parser.add_argument("--data", required=True)
    parser.add_argument("--image-root", default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--prompt", choices=("paper", "generic"), default="paper",
                        help="paper: Figure 8's layout (DEEM also gets its answer prefix); generic: image + question "
                             "in the model's chat template (see evaluation/answering.py)")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--mmvp-original-answers", action="store_true",
                        help="score MMVP with Questions.csv's own answers (default: known swapped ones corrected)")
    parser.add_argument("--update-card", action="store_true",
                        help="add the scores to each local --model folder's card, README.md (evaluation/model_card.py)")
    args = parser.parse_args(argv)

    import torch
    from accelerate import PartialState

    from . import answering
    from .benchmarks import load_benchmark, run_benchmark
    from .report import bar_chart, decoding_settings, load_summaries, results_folder, run_metadata, save_result, table

    state = PartialState(cpu=not torch.cuda.is_available())
    loaded = load_benchmark(args.benchmark, args.data, args.image_root, args.limit,  # all rows checked first
                            mmvp_original_answers=args.mmvp_original_answers)
    max_new_tokens = args.max_new_tokens or (30 if args.benchmark == "caption" else 8)
    for model in args.model:
        answerer = answering.ImageQuestionAnswerer(model, max_new_tokens=max_new_tokens, batch_size=args.batch_size,
                                                   prompt=args.prompt, task=args.benchmark)
        result = run_benchmark(loaded, answerer, model)
        result.prompt = args.prompt
        if state.is_main_process:
            decoding = decoding_settings(answerer, strategy="greedy", do_sample=False, num_beams=1,
                                         max_new_tokens=max_new_tokens, batch_size=args.batch_size)
            run = {**run_metadata(model, decoding, args.prompt),
                   "prompt_template": answerer.run_settings()["prompt_template"]}
            print(f"wrote {save_result(result, args.results_dir, run)} ({state.num_processes} process(es))")
            if args.update_card:
                from .model_card import update_card

                print(update_card(model, result.summary()))
    if state.is_main_process:
        summaries = load_summaries(args.results_dir, args.benchmark, loaded.data_key)
        print(f"{args.benchmark} on {args.data} (data key {loaded.data_key}):")
        print(table(summaries))
        for note in loaded.notes:
            print(note)
        folder = results_folder(args.results_dir, args.benchmark, loaded.data_key)
        print(f"wrote {bar_chart(summaries, args.benchmark, folder / 'chart.png')}")
    return 0


def build(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation build-robustvqa",
                                     description="Build RobustVQA from ImageNet-A/-R/-V2 images (paper appendix D.1).")
    parser.add_argument("--source", required=True, help="A, R or V (any name is kept in the 'source' field)")
    parser.add_argument("--images", required=True, help="class-subfolder image folder, or a save_to_disk dataset")
    parser.add_argument("--output", required=True)
    parser.add_argument("--clip-model", default="ViT-L-14-336")
    parser.add_argument("--clip-pretrained", default="openai", help="open_clip tag or checkpoint path")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", default=None,
                        help="a JSON list of {id, name[, folder]} for another label set (default: ImageNet's 1000)")
    args = parser.parse_args(argv)

    from pathlib import Path

    from .robustvqa import ClipZeroShot, build_robustvqa, dataset_images, image_folder, load_classes

    classes = load_classes(args.classes) if args.classes else None

    source = Path(args.images)
    if (source / "dataset_info.json").exists():
        from datasets import load_from_disk

        items = dataset_images(load_from_disk(str(source)), num_classes=len(classes) if classes else 1000)
    else:
        items = image_folder(source, classes)
    clip = ClipZeroShot(args.clip_model, args.clip_pretrained, classes=classes)
    counts = build_robustvqa(args.source, items, args.output, clip, batch_size=args.batch_size, seed=args.seed,
                             classes=classes)
    print(counts)
    return 0


def matching(benchmark: str, argv: list[str]) -> int:
    """Image–text matching: the diffusion UNet matcher, and a CLIP baseline on the same data."""
    parser = argparse.ArgumentParser(prog=f"python -m evaluation {benchmark}",
                                     description="Zero-shot image-text matching with a diffusion UNet (and CLIP).")
    parser.add_argument("--sd-model", required=True, help="diffusers Stable Diffusion folder or hub id")
    parser.add_argument("--data", required=True, help="MMVP-VLM folder (Questions.csv + images) or Winoground jsonl")
    parser.add_argument("--image-root", default=None)
    parser.add_argument("--score", choices=["attention", "error"], default="attention")
    parser.add_argument("--timesteps", type=int, nargs="+", default=None)
    parser.add_argument("--layers", choices=["all", "last"], default="all")
    parser.add_argument("--clip-model", default=None, help="open_clip name for the CLIP baseline (none: skip it)")
    parser.add_argument("--clip-pretrained", default="openai")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args(argv)

    from pathlib import Path

    from .benchmarks import BenchmarkResult, read_rows
    from .diffusion_matching import DEFAULT_TIMESTEPS, DiffusionImageTextScorer
    from .report import bar_chart, load_summaries, save_result, table
    from .vlm_matching import ClipScorer, diffusion_scorer, evaluate_mmvp_vlm, evaluate_winoground, load_mmvp_vlm

    scorers = {f"diffusion-{args.score}": diffusion_scorer(DiffusionImageTextScorer.from_pretrained(
        args.sd_model, timesteps=args.timesteps or DEFAULT_TIMESTEPS, layers=args.layers), args.score)}
    if args.clip_model:
        scorers[f"clip-{args.clip_model}"] = ClipScorer(args.clip_model, args.clip_pretrained)
    if benchmark == "mmvp-vlm":
        items = load_mmvp_vlm(args.data)[: args.limit]
    else:
        items = read_rows(args.data)[: args.limit]
    root = Path(args.image_root) if args.image_root else Path(args.data).parent
    for name, scorer in scorers.items():
        if benchmark == "mmvp-vlm":
            outcome = evaluate_mmvp_vlm(items, scorer)
        else:
            outcome = evaluate_winoground(items, scorer, root)
        result = BenchmarkResult(benchmark, name, outcome["scores"], outcome["records"])
        print(f"wrote {save_result(result, args.results_dir)}")
    summaries = load_summaries(args.results_dir, benchmark)
    print(table(summaries))
    print(f"wrote {bar_chart(summaries, benchmark, Path(args.results_dir) / benchmark / 'chart.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
