"""`drop_code_copies`: a config-only folder (hub_configs/*) names no code it does not carry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modeling_deem.config_only_folder import drop_code_copies


def test_saved_processor_and_model_lose_their_code_and_every_auto_map(tiny_model, processor, tmp_path: Path) -> None:
    tiny_model.processor = processor
    tiny_model.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.py")) and "auto_map" in (tmp_path / "processor_config.json").read_text()
    weights = (tmp_path / "model.safetensors").read_bytes()
    changed = drop_code_copies(tmp_path)
    assert "config.json" in changed and "processor_config.json" in changed
    assert not list(tmp_path.glob("*.py")) and (tmp_path / "model.safetensors").read_bytes() == weights
    for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
        assert "auto_map" not in (tmp_path / name).read_text(), name
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "deem"
    assert drop_code_copies(tmp_path) == []  # nothing left to drop: files untouched


def test_a_missing_folder_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        drop_code_copies(tmp_path / "nowhere")
