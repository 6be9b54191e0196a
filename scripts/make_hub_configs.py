"""Writes hub_configs/deem-tiny/config.json and hub_configs/deem-7b/config.json from the code's own definitions.

Run: .venv/bin/python scripts/make_hub_configs.py  (the output is committed; a test checks it is current)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeling_deem import DeemConfig  # noqa: E402
from modeling_deem.tiny import tiny_config  # noqa: E402


def hub_config(name: str) -> DeemConfig:
    if name == "deem-tiny":
        return tiny_config()
    if name == "deem-7b":
        return DeemConfig()
    raise ValueError(f"unknown hub config {name!r}")


def main() -> None:
    for name in ("deem-tiny", "deem-7b"):
        folder = ROOT / "hub_configs" / name
        folder.mkdir(parents=True, exist_ok=True)
        # Only the JSON: the code travels with saved checkpoints (save_pretrained copies it there).
        hub_config(name).to_json_file(folder / "config.json")
        print(f"wrote hub_configs/{name}/config.json")
    # deem-7b's processor: the paper's image sizes and a pointer to Vicuna's tokenizer
    # (load with `DeemProcessor.from_hub_config("hub_configs/deem-7b")`).
    processor = {
        "processor_class": "DeemProcessor",
        "base_tokenizer": "lmsys/vicuna-7b-v1.5",
        "num_image_tokens": 77,
        "image_processor": {"image_processor_type": "DeemImageProcessor", "size": 256, "decoder_size": 512},
    }
    (ROOT / "hub_configs" / "deem-7b" / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    print("wrote hub_configs/deem-7b/processor_config.json")


if __name__ == "__main__":
    main()
