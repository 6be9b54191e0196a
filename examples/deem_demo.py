"""The main job on the tiny default: build DEEM from hub_configs/deem-tiny, train a few stage-I steps on
generated data, save, reload through AutoModel with remote code, and report the three losses.

Run: ./scripts/setup.sh && .venv/bin/python examples/deem_demo.py --output-dir outputs/demo
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import AutoModel  # noqa: E402

from modeling_deem import DeemConfig, DeemForConditionalGeneration  # noqa: E402


def shape_batch(generator: torch.Generator, config: DeemConfig) -> dict[str, torch.Tensor]:
    """A caption-then-image document per row: coloured squares whose colour the caption names."""
    size, decoder_size = config.vision_config.image_size, config.decoder_image_size
    colours = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    which = torch.randint(0, 3, (4,), generator=generator)
    images = torch.full((4, 3, size, size), -1.0)
    for i, c in enumerate(which.tolist()):
        top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        images[i, :, top : top + size // 2, left : left + size // 2] = colours[c][:, None, None]
    slot = [config.image_start_token_id] + [config.image_token_id] * config.num_image_tokens
    rows = [[config.bos_token_id, 10 + c, 20, 21] + slot + [config.eos_token_id] for c in which.tolist()]
    input_ids = torch.tensor(rows)
    decoder = torch.nn.functional.interpolate(images, size=(decoder_size, decoder_size), mode="area")
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone(),
            "pixel_values": images, "decoder_pixel_values": decoder}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "hub_configs" / "deem-tiny"))
    parser.add_argument("--output-dir", default=str(ROOT / "outputs" / "demo"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    config = DeemConfig.from_pretrained(args.config)
    model = DeemForConditionalGeneration(config)
    # Stage I: the LLM, UNet and VAE are frozen; the image side and resamplers train.
    model.language_model.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, betas=(0.9, 0.995), eps=1e-6, weight_decay=0.05)
    generator = torch.Generator().manual_seed(args.seed)
    history = []
    model.train()
    for _ in (bar := tqdm(range(args.steps), desc="stage-I training")):
        output = model(**shape_batch(generator, config))
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses = {k: getattr(output, k).item() for k in ("loss", "ntp_loss", "nip_loss", "csr_loss")}
        history.append(losses)
        bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})

    checkpoint = out / "checkpoint"
    model.save_pretrained(checkpoint)
    reloaded = AutoModel.from_pretrained(checkpoint, trust_remote_code=True)
    for key, value in model.state_dict().items():
        if not torch.equal(value, reloaded.state_dict()[key]):
            raise RuntimeError(f"reloaded weights differ at {key}")
    report = {"first_step": history[0], "last_step": history[-1], "history": history,
              "checkpoint": str(checkpoint), "reloaded_class": type(reloaded).__module__}
    (out / "losses.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({"first_step": history[0], "last_step": history[-1]}, indent=2))
    print(f"checkpoint reloaded bit-exactly through AutoModel (remote code); report: {out / 'losses.json'}")


if __name__ == "__main__":
    main()
