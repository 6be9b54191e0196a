"""The main job on the shipped toy DEEM (`hub_configs/deem-toy`, a stage-II checkpoint of `toyworld.study`; see
docs/TOY_WORLD.md), or on any trained toy DEEM given by `--model`.

Fine-tunes it for a few stage-II steps with DeemTrainer on freshly generated toy instructions, saves, reloads
through `AutoModel.from_pretrained(..., trust_remote_code=True)`, answers questions about freshly drawn test
images through `pipeline("image-text-to-text")` (printed next to the truth, with the accuracy), rebuilds those
images from the image encoder's own tokens (the CSR path), generates images from their captions (the NIP path),
and writes `samples.png` (inputs / reconstructions / generations) and `report.json` to the output folder, with
how well the generations match their captions by the model's own toy CLIP.

Run: .venv/bin/python examples/toy_demo.py --output-dir outputs/toy-demo
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import AutoModel, pipeline, set_seed  # noqa: E402

from examples.deem_demo import image_grid  # noqa: E402
from modeling_deem import DeemForConditionalGeneration  # noqa: E402
from toyworld.datasets import instructions, rng_for, shown_scene  # noqa: E402
from toyworld.quality import caption_match  # noqa: E402
from toyworld.text import caption, questions  # noqa: E402
from trainers import STAGES, DeemDataCollator, DeemTrainer  # noqa: E402

ASKED = ("colour", "shape", "count")  # one-word answers a person can check at a glance


def test_questions(num_images: int, seed: int) -> list[dict]:
    """Fresh test images (a split and seed training never used), one checkable question each, with the truth."""
    rows = []
    for index in range(num_images):
        scene, image = shown_scene(index, "photo", seed, "demo")
        rng = rng_for("demo", seed, "demo", index)
        pool = [qa for qa in questions(scene) if qa.kind in ASKED]
        qa = rng.choice(pool)
        rows.append({"image": image, "question": qa.question, "truth": qa.answer,
                     "caption": caption(scene, random.Random(index))})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="DEEM main job on the shipped toy model")
    parser.add_argument("--model", default=str(ROOT / "hub_configs" / "deem-toy"), help="a trained toy DEEM folder")
    parser.add_argument("--output-dir", default=str(ROOT / "outputs" / "toy-demo"))
    parser.add_argument("--steps", type=int, default=20, help="stage-II fine-tuning steps")
    parser.add_argument("--questions", type=int, default=12, help="fresh test images, one question each")
    parser.add_argument("--inference-steps", type=int, default=25, help="diffusion sampling steps (paper: 250)")
    # The toy SD draws clean shapes unguided; at 3.5 (the package default) and 7 its guided samples smear towards
    # a few colours and squares (docs/TOY_WORLD.md), so the demo samples at 1.0.
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance of the "
                        "generations (1.0: none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.time()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    # Shipped copies are float16 (toyworld/ship.py); train in float32.
    model = DeemForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32)
    processor = model.processor
    recipe = STAGES["stage2"]
    recipe.configure_processor(processor, image_size=processor.image_processor.size)  # the toy world's 64 px
    dataset = instructions("train", num_rows=max(16, 4 * args.steps), seed=1000 + args.seed, layout="mixed")
    training_args = recipe.training_arguments(
        str(out / "trainer"), max_steps=args.steps, learning_rate=2e-4, per_device_train_batch_size=4,
        logging_steps=max(1, min(5, args.steps)), save_strategy="no", report_to="none", use_cpu=True,
        seed=args.seed, dataloader_num_workers=0, disable_tqdm=True)
    trainer = DeemTrainer(model=model, args=training_args, train_dataset=dataset, stage=recipe,
                          data_collator=DeemDataCollator(processor), processing_class=processor)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "ntp_loss" in entry]

    checkpoint = out / "checkpoint"
    model.save_pretrained(checkpoint)  # with its processor: the folder feeds pipeline(...) as it is
    reloaded = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
    mismatched = [k for k, v in model.state_dict().items() if not torch.equal(v, reloaded.state_dict()[k])]
    if mismatched:
        raise RuntimeError(f"reloaded weights differ: {mismatched[:5]}")

    rows = test_questions(args.questions, args.seed)
    answerer = pipeline("image-text-to-text", model=str(checkpoint), trust_remote_code=True)
    answerer.processor.tokenizer.padding_side = "left"  # one batch of prompts: generation needs left padding
    messages = [[{"role": "user", "content": [{"type": "image", "image": row["image"]},
                                              {"type": "text", "text": row["question"]}]}] for row in rows]
    outputs = answerer(text=messages, max_new_tokens=6, return_full_text=False,
                       generate_kwargs={"do_sample": False}, batch_size=len(rows))
    print(f"{'question':<42} {'answer':<14} truth")
    for row, output in zip(rows, outputs):
        row["answer"] = output[0]["generated_text"].strip() if isinstance(output, list) else output["generated_text"].strip()
        row["correct"] = row["answer"].lower().rstrip(".") == row["truth"].lower()
        print(f"{row['question']:<42} {row['answer']:<14} {row['truth']}{'' if row['correct'] else '   (wrong)'}")
    accuracy = sum(row["correct"] for row in rows) / len(rows)
    print(f"accuracy {accuracy:.0%} on {len(rows)} fresh test images")

    shown = rows[:6]
    generator = torch.Generator().manual_seed(args.seed)
    pixels = processor(text="<image>" * len(shown), images=[row["image"] for row in shown])["pixel_values"]
    rebuilt = reloaded.reconstruct_images(pixels, num_inference_steps=args.inference_steps, generator=generator)
    prompts = [row["caption"] for row in shown]
    generated = reloaded.generate(**processor(text=prompts, padding_side="left"), generation_mode="image",
                                  num_inference_steps=args.inference_steps, guidance_scale=args.guidance_scale,
                                  generator=generator)
    image_grid([("inputs", [row["image"] for row in shown]), ("reconstructed", rebuilt),
                ("generated", generated)]).save(out / "samples.png")
    clip_folder = Path(args.model) / "stage0" / "clip"  # the toy CLIP the shipped model was assembled from
    match = caption_match(generated, prompts, clip_folder) if clip_folder.is_dir() and len(prompts) > 1 else None
    if match is not None:
        print(f"generations against their own captions: toy CLIP score {match['own_captions']:.1f} "
              f"(against other captions {match['other_captions']:.1f})")

    report = {
        "model": args.model, "stage": recipe.name, "steps": args.steps, "guidance_scale": args.guidance_scale,
        "losses_first_log": logged[0] if logged else None, "losses_last_log": logged[-1] if logged else None,
        "log_history": trainer.state.log_history, "checkpoint": str(checkpoint),
        "reloaded_class": f"{type(reloaded).__module__}.{type(reloaded).__name__}",
        "answers": [{k: row[k] for k in ("question", "answer", "truth", "correct")} for row in rows],
        "accuracy": accuracy, "image_prompts": prompts, "generation_caption_match": match,
        "samples": str(out / "samples.png"),
        "seconds": round(time.time() - start, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out / 'samples.png'} and {out / 'report.json'} in {report['seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
