"""The main job on the tiny default, end to end.

Builds DEEM from hub_configs/deem-tiny, trains a few stage-I steps with DeemTrainer on generated coloured
shapes, saves, reloads through `AutoModel.from_pretrained(..., trust_remote_code=True)`, answers a question
through `pipeline("image-text-to-text")`, generates and reconstructs images, and writes `samples.png` and
`report.json` to the output folder.

Run: ./scripts/setup.sh && .venv/bin/python examples/deem_demo.py --output-dir outputs/demo
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from transformers import AutoModel, pipeline, set_seed  # noqa: E402

from modeling_deem import DeemConfig, DeemForConditionalGeneration  # noqa: E402
from processing import DeemProcessor  # noqa: E402
from trainers import STAGES, DeemDataCollator, DeemTrainer, make_shapes_dataset  # noqa: E402


def image_grid(rows: list[tuple[str, list[Image.Image]]], cell: int = 96) -> Image.Image:
    """Labelled rows of images, each scaled to `cell` pixels."""
    width = max(len(images) for _, images in rows)
    grid = Image.new("RGB", (120 + width * cell, len(rows) * cell), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(rows):
        draw.text((4, r * cell + cell // 2 - 6), label, fill="black")
        for c, image in enumerate(images):
            grid.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST), (120 + c * cell, r * cell))
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description="DEEM main job on the tiny default")
    parser.add_argument("--config", default=str(ROOT / "hub_configs" / "deem-tiny"))
    parser.add_argument("--output-dir", default=str(ROOT / "outputs" / "demo"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--inference-steps", type=int, default=25, help="diffusion sampling steps (paper: 250)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)

    processor = DeemProcessor.from_pretrained(args.config)
    model = DeemForConditionalGeneration(DeemConfig.from_pretrained(args.config))
    dataset = make_shapes_dataset(num_rows=96, seed=args.seed)
    recipe = STAGES["stage1"]
    recipe.configure_processor(processor, image_size=processor.image_processor.size)  # stage I's centre crop, tiny size
    training_args = recipe.training_arguments(
        str(out / "trainer"), max_steps=args.steps, warmup_steps=max(1, args.steps // 10), learning_rate=1e-3,
        per_device_train_batch_size=4, logging_steps=min(5, args.steps), save_strategy="no", report_to="none", use_cpu=True,
        seed=args.seed, dataloader_num_workers=0,
    )
    trainer = DeemTrainer(model=model, args=training_args, train_dataset=dataset, stage=recipe,
                          data_collator=DeemDataCollator(processor), processing_class=processor)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "ntp_loss" in entry]

    checkpoint = out / "checkpoint"
    model.save_pretrained(checkpoint)  # with the processor the trainer gave it: the folder feeds pipeline as it is
    reloaded = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
    reloaded_state = reloaded.state_dict()
    mismatched = [k for k, v in model.state_dict().items() if not torch.equal(v, reloaded_state[k])]
    if mismatched:
        raise RuntimeError(f"reloaded weights differ: {mismatched[:5]}")

    sample = dataset[1]
    answerer = pipeline("image-text-to-text", model=str(checkpoint), trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image", "image": sample["images"][0]},
                                             {"type": "text", "text": "What colour is the shape?"}]}]
    answer = answerer(text=messages, max_new_tokens=8, return_full_text=False,
                      generate_kwargs={"do_sample": False})[0]["generated_text"]

    prompts = ["A photo of a red square.", "A photo of a blue circle."]
    generated = reloaded.generate(**processor(text=prompts, padding_side="left"), generation_mode="image",
                                  num_inference_steps=args.inference_steps,
                                  generator=torch.Generator().manual_seed(args.seed), show_progress=True)
    originals = [dataset[i]["images"][0] for i in range(4)]
    pixels = processor(text="<image>" * len(originals), images=originals)["pixel_values"]
    rebuilt = reloaded.reconstruct_images(pixels, num_inference_steps=args.inference_steps,
                                          generator=torch.Generator().manual_seed(args.seed))
    image_grid([("inputs", originals), ("reconstructed", rebuilt), ("generated", generated)]).save(
        out / "samples.png")

    report = {
        "stage": recipe.name,
        "steps": args.steps,
        "losses_first_log": logged[0] if logged else None,
        "losses_last_log": logged[-1] if logged else None,
        "log_history": trainer.state.log_history,
        "checkpoint": str(checkpoint),
        "reloaded_class": f"{type(reloaded).__module__}.{type(reloaded).__name__}",
        "pipeline_question": "What colour is the shape?",
        "pipeline_answer": answer,
        "image_prompts": prompts,
        "samples": str(out / "samples.png"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: report[k] for k in ("losses_first_log", "losses_last_log", "pipeline_answer")}, indent=2))
    print(f"wrote {out / 'samples.png'} and {out / 'report.json'}")


if __name__ == "__main__":
    main()
