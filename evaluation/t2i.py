"""Text-to-image evaluation (the paper's Table 4): generate images for captions, report FID and CLIP score.

    python -m evaluation t2i --model my-deem --data coco_captions.jsonl --reference-images val2014/ \
        --inception-weights weights-inception-2015-12-05-6726825d.pth --clip-model clip-vit-large-patch14/

As in the paper on MS-COCO: 8 seeded samples per caption (DDPM, 250 steps, guidance 3.5 by default), the one CLIP
(ViT-L) finds closest to the caption is kept (`--samples-per-caption 1`: no re-ranking, as for LN-COCO); FID of the
kept images against the reference folder; CLIP score of the kept images and of all candidates (re-ranking with the
scoring CLIP raises the first). Results: `<results-dir>/t2i/<data key>/<model key>.json` (`result_keys`); the data
key here also covers the reference folder's file list and the generation settings, so runs compared in one table
were generated alike.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from . import image_metrics
from .benchmarks import BenchmarkResult
from .images import open_image
from .report import aligned_table
from .result_keys import data_key, short_hash
from .rows import read_located_rows

SCHEDULERS = ("ddpm", "ddim", "dpm")


@dataclass
class T2IResult(BenchmarkResult):
    """A benchmark result that also records how the images were generated."""

    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "settings": self.settings}


@dataclass
class Extractors:
    """What the metrics run on: Inception for FID (or an injected feature module) and a loaded CLIP."""

    fid: Any
    clip: tuple[Any, Any]


def load_captions(path: str | Path, limit: int | None = None) -> list[str]:
    """The `caption` field of each row (JSON lines, JSON list or CSV); a missing or empty caption names its line."""
    rows = read_located_rows(path)[:limit]
    captions = []
    for row in rows:
        caption = row.fields.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{row.where}: needs a non-empty 'caption' string, got {caption!r:.60}.")
        captions.append(caption.strip())
    if len(captions) < 2:
        raise ValueError(f"{path}: {len(captions)} caption(s); FID needs at least 2 generated images.")
    return captions


def candidate_seed(seed: int, index: int, sample: int, samples: int) -> int:
    """Candidate `sample` of caption `index` always gets the same noise, whatever the batch size or device."""
    return seed + index * samples + sample


def generate_candidates(model: Any, processor: Any, captions: Sequence[str], samples: int, steps: int,
                        guidance: float, seed: int, batch_size: int, prompt: str = "{caption}",
                        progress: Callable[[int], None] | None = None):
    """Yields (caption index, candidate images) as each caption's candidates are done; prompts are left-padded
    batches of at most `batch_size` candidates, each with its own CPU generator (device-independent noise)."""
    jobs = [(index, sample) for index in range(len(captions)) for sample in range(samples)]
    pending: dict[int, list[Image.Image]] = {}
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        texts = [prompt.format(caption=captions[index]) for index, _ in chunk]
        inputs = processor(text=texts, padding=True, padding_side="left", return_tensors="pt").to(model.device)
        generators = [torch.Generator().manual_seed(candidate_seed(seed, i, s, samples)) for i, s in chunk]
        images = model.generate(**inputs, generation_mode="image", num_inference_steps=steps,
                                guidance_scale=guidance, generator=generators)
        for (index, _), image in zip(chunk, images):
            pending.setdefault(index, []).append(image)
            if len(pending[index]) == samples:
                yield index, pending.pop(index)
        if progress is not None:
            progress(len(chunk))


def evaluate_model(model_path: str, captions: Sequence[str], extractors: Extractors, args: argparse.Namespace,
                   key: str) -> T2IResult:
    """Generates, re-ranks, scores one model; the FID's reference features stay from the first pass."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(model_path, trust_remote_code=True, dtype=dtype)
    model = model.to(device).eval()
    set_scheduler(model, args.scheduler)
    size = args.image_size
    extractors.fid.reset()  # generated features only: reset_real_features=False keeps the references
    kept_score = image_metrics.clip_score_metric(extractors.clip).to(device)
    all_score = image_metrics.clip_score_metric(extractors.clip).to(device)
    image_dir = None
    if args.save_images:
        image_dir = Path(args.save_images) / Path(model_path).name
        image_dir.mkdir(parents=True, exist_ok=True)
    records, kept, kept_captions = [], [], []

    def flush() -> None:
        if not kept:
            return
        image_metrics.add_images(extractors.fid, kept, size, real=False)
        kept_score.update(list(image_metrics.square_uint8(kept, size).to(device)), kept_captions)
        kept.clear()
        kept_captions.clear()

    bar = tqdm(total=len(captions) * args.samples_per_caption, desc=f"generating ({Path(model_path).name})")
    for index, images in generate_candidates(model, processor, captions, args.samples_per_caption,
                                             args.num_inference_steps, args.guidance_scale, args.seed,
                                             args.batch_size, args.prompt, bar.update):
        caption = captions[index]
        similarities = image_metrics.clip_similarities(extractors.clip, images, caption)
        chosen = max(range(len(images)), key=similarities.__getitem__)
        all_score.update(list(image_metrics.square_uint8(images, size).to(device)), [caption] * len(images))
        kept.append(images[chosen])
        kept_captions.append(caption)
        record = {"index": index, "caption": caption, "chosen": chosen, "clip_similarities": similarities,
                  "seeds": [candidate_seed(args.seed, index, s, args.samples_per_caption)
                            for s in range(args.samples_per_caption)]}
        if image_dir is not None:
            record["image"] = str(image_dir / f"{index:06d}.png")
            images[chosen].save(record["image"])
        records.append(record)
        if len(kept) >= args.batch_size:
            flush()
    bar.close()
    flush()
    records.sort(key=lambda r: r["index"])
    scores = {"fid": image_metrics.fid_value(extractors.fid), "clip_score": float(kept_score.compute()),
              "clip_score_candidates": float(all_score.compute())}
    return T2IResult("t2i", model_path, scores, records, data_key=key, settings=settings(args))


def set_scheduler(model: Any, name: str) -> None:
    """DDPM as the authors sample; DDIM or DPM-Solver for fewer steps (same trained noise schedule)."""
    if name == "ddpm":
        return
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    scheduler = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}[name]
    model.sampling_scheduler = scheduler.from_config(model.noise_scheduler.config)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The generation settings a result depends on (they go into the data key and the summary)."""
    return {"samples_per_caption": args.samples_per_caption, "num_inference_steps": args.num_inference_steps,
            "guidance_scale": args.guidance_scale, "seed": args.seed, "scheduler": args.scheduler,
            "prompt": args.prompt, "image_size": args.image_size, "dtype": args.dtype,
            "reference_images": str(Path(args.reference_images).resolve()), "clip_model": args.clip_model,
            "inception_weights": args.inception_weights and Path(args.inception_weights).name}


def t2i_data_key(args: argparse.Namespace, references: Sequence[Path]) -> str:
    """`result_keys.data_key` of the captions file and --limit, plus a hash of the reference file list and the
    generation settings."""
    root = Path(args.reference_images)
    listing = [str(path.relative_to(root)) for path in references]
    extra = json.dumps({"references": listing, "settings": settings(args)}, sort_keys=True)
    return f"{data_key(args.data, [Path(args.data)], args.limit)}-{short_hash(extra)}"


def table(summaries: Sequence[dict[str, Any]]) -> str:
    """One row per model: FID (lower is better) and CLIP scores as they are (not percentages)."""
    if not summaries:
        return "(no results)"
    header = ["model", "fid", "clip_score", "clip_score_candidates", "captions"]
    rows = [[s["model"], *(f"{s['scores'].get(c, float('nan')):.3f}" for c in header[1:4]), str(s["evaluated"])]
            for s in summaries]
    return aligned_table(header, rows)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluation t2i", description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="DEEM folder or hub id; repeat to compare")
    p.add_argument("--data", required=True, help="captions: JSON lines / JSON list / CSV with a 'caption' field")
    p.add_argument("--reference-images", required=True, help="folder of real images (searched recursively)")
    p.add_argument("--inception-weights", default=None, help=f"torch-fidelity's {image_metrics.INCEPTION_WEIGHTS_FILE}")
    p.add_argument("--clip-model", default="openai/clip-vit-large-patch14", help="transformers CLIP folder or hub id")
    p.add_argument("--samples-per-caption", type=int, default=8, help="candidates re-ranked by CLIP (1: none)")
    p.add_argument("--num-inference-steps", type=int, default=250)
    p.add_argument("--guidance-scale", type=float, default=3.5)
    p.add_argument("--scheduler", choices=SCHEDULERS, default="ddpm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default="{caption}", help="prompt template around the caption")
    p.add_argument("--image-size", type=int, default=None, help="FID input size (default: the model's output size)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--device", default=None)
    p.add_argument("--save-images", default=None, help="folder for the kept images (one subfolder per model)")
    p.add_argument("--results-dir", default="results")
    return p


def main(argv: Sequence[str], feature: torch.nn.Module | None = None) -> int:
    """The `t2i` subcommand. `feature`: a module replacing Inception in FID (tests; the CLI never sets it)."""
    from .report import load_summaries, results_folder, save_result

    args = parser().parse_args(list(argv))
    for name in ("samples_per_caption", "num_inference_steps", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if "{caption}" not in args.prompt:
        raise ValueError(f"--prompt must contain '{{caption}}', got {args.prompt!r}.")
    captions = load_captions(args.data, args.limit)  # all input checked before any weights load
    references = image_metrics.image_files(args.reference_images)
    if args.image_size is None:  # every model's images meet the references at the first model's output size
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(args.model[0], trust_remote_code=True)
        args.image_size = int(config.decoder_image_size)
    key = t2i_data_key(args, references)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fid = image_metrics.fid_metric(args.inception_weights, feature).to(device)
    extractors = Extractors(fid, image_metrics.load_clip(args.clip_model))
    extractors.clip[0].to(device)
    with tqdm(total=len(references), desc="reference images") as bar:  # once, kept across models
        image_metrics.add_reference_folder(fid, references, args.image_size, args.batch_size, open_image, bar.update)
    for model_path in args.model:
        result = evaluate_model(model_path, captions, extractors, args, key)
        print(f"wrote {save_result(result, args.results_dir)}")
    print(f"t2i on {args.data} (data key {key}, {results_folder(args.results_dir, 't2i', key)}):")
    print(table(load_summaries(args.results_dir, "t2i", key)))
    return 0
