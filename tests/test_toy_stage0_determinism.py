"""Stage 0 is the same in every process: the toy CLIP and the toy Stable Diffusion trained in two fresh Python
processes with different hash seeds come out bit for bit equal (weights, configs and tokenizers).

This is what `scripts/reproduce_deem_toy.sh` relies on. It once failed: the BPE trainer broke ties in per-process
hash order, so each stage-0 part got its own token numbering; the committed toy tokenizer fixed that.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from toyworld.reproduction import compare

TRAIN_TINY_STAGE0 = """
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
from toyworld import clip, diffusion

out = Path(sys.argv[1])
clip.train(out / "clip", steps=2, batch_size=4, log_every=0, eval_images=8, pool_size=16)
diffusion.train(out / "sd", vae_steps=2, unet_steps=2, batch_size=4, vae_batch_size=2, pool_size=16, log_every=0,
                eval_images=4, num_samples=2, num_inference_steps=2)
"""


def test_stage0_parts_trained_in_two_processes_are_identical(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-c", TRAIN_TINY_STAGE0, str(tmp_path / hash_seed)], cwd=root, env=env,
                       check=True, capture_output=True, timeout=300)
    result = compare(tmp_path / "1", tmp_path / "2")
    assert result["files"] >= 10  # both parts' weights, configs and tokenizers were compared
    assert "clip/tokenizer.json" in {str(p.relative_to(tmp_path / "1")) for p in (tmp_path / "1").rglob("*")}
    assert result["identical"], result["differences"]
