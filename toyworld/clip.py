"""Stage 0 of the toy world: its "CLIP", the image encoder DEEM takes as given.

A small open_clip model whose image tower is a timm ConvNeXt (as DEEM's CLIP-ConvNeXt), trained contrastively on
the toy photographs' captions, saved in open_clip's own format (a model config + a state-dict checkpoint) and
loaded back the way the real one is: `open_clip.create_model(name, pretrained=path)`, i.e.
`DeemForConditionalGeneration.from_components(vision_model=TOY_CLIP, vision_pretrained=path, ...)`.

    python -m toyworld.clip --output-dir outputs/toy-clip
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from .datasets import photographs, renditions
from .scene import SHAPES, Factors

TOY_CLIP = "toy-clip-convnext"
TOY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False, "timm_pool": "avg",
                   "timm_proj": "linear", "image_size": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}
PROMPT = "A photo of a {}."


def register(folder: str | Path) -> str:
    """Write the model config beside the checkpoint and register it with open_clip (as a named model)."""
    import open_clip

    path = Path(folder) / f"{TOY_CLIP}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(TOY_CLIP_CONFIG, indent=2))
    open_clip.add_model_config(path)
    return TOY_CLIP


def load(folder: str | Path) -> tuple[Any, Any, Any]:
    """(model, eval preprocess, tokenizer) of a saved toy CLIP, through open_clip's own loading."""
    import open_clip

    register(folder)
    model, _, preprocess = open_clip.create_model_and_transforms(TOY_CLIP, pretrained=str(Path(folder) / "open_clip_toy.pt"))
    return model.eval(), preprocess, open_clip.get_tokenizer(TOY_CLIP)


@torch.no_grad()
def zero_shot_accuracy(model: Any, preprocess: Any, tokenizer: Any, kind: str = "photo", num_images: int = 200,
                       seed: int = 1) -> float:
    """Shape recognition from single-object images of a rendition, by the prompts "A photo of a {shape}."."""
    rows = renditions(kind, split="test", num_rows=num_images, seed=seed, factors=Factors(counts=(1,)))
    text = torch.nn.functional.normalize(model.encode_text(tokenizer([PROMPT.format(s) for s in SHAPES])), dim=-1)
    pixels = torch.stack([preprocess(row["images"][0]) for row in rows])
    image = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
    predicted = (image @ text.T).argmax(-1).tolist()
    truth = [SHAPES.index(row["shapes"][0]) for row in rows]
    return sum(p == t for p, t in zip(predicted, truth)) / len(truth)


def train(output_dir: str | Path, steps: int = 600, batch_size: int = 64, lr: float = 3e-4, seed: int = 0,
          log_every: int = 50, eval_images: int = 200) -> dict[str, Any]:
    """Contrastive training on photographs and their captions; saves `open_clip_toy.pt` and a report."""
    import open_clip

    torch.manual_seed(seed)
    output_dir = Path(output_dir)
    register(output_dir)
    model, preprocess_train, preprocess = open_clip.create_model_and_transforms(TOY_CLIP, output_dict=True)
    tokenizer = open_clip.get_tokenizer(TOY_CLIP)
    data = photographs("train", num_rows=steps * batch_size, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    criterion = open_clip.ClipLoss()
    losses, start = [], time.time()
    model.train()
    for step in range(steps):
        rows = data[step * batch_size : (step + 1) * batch_size]
        pixels = torch.stack([preprocess_train(images[0]) for images in rows["images"]])
        out = model(pixels, tokenizer(rows["caption"]))
        loss = criterion(out["image_features"], out["text_features"], out["logit_scale"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps} loss {sum(losses[-log_every:]) / log_every:.3f}", flush=True)
    torch.save(model.state_dict(), output_dir / "open_clip_toy.pt")
    model.eval()
    report = {"steps": steps, "batch_size": batch_size, "seed": seed, "seconds": round(time.time() - start, 1),
              "first_loss": losses[0], "last_loss": sum(losses[-10:]) / min(10, len(losses)),
              "zero_shot_accuracy": {kind: zero_shot_accuracy(model, preprocess, tokenizer, kind, eval_images)
                                     for kind in ("photo", "outline", "stripes", "noise", "blur", "background")},
              "chance": 1 / len(SHAPES)}
    (output_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m toyworld.clip", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = train(args.output_dir, args.steps, args.batch_size, args.lr, args.seed)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
