"""`toyworld.reproduction.compare`: what `scripts/reproduce_deem_toy.sh` trusts to say "bit for bit"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from toyworld.reproduction import compare, main


def _folder(root: Path) -> Path:
    (root / "stage0" / "lm").mkdir(parents=True)
    save_file({"a": torch.arange(6, dtype=torch.float16).reshape(2, 3), "b": torch.zeros(())},
              root / "model.safetensors")
    save_file({"w": torch.ones(4)}, root / "stage0" / "lm" / "model.safetensors")
    (root / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (root / "stage0" / "lm" / "report.json").write_text(json.dumps({"seconds": 1.0}))
    return root


def test_identical_folders_are_the_same_and_reports_are_not_compared(tmp_path: Path) -> None:
    a, b = _folder(tmp_path / "a"), _folder(tmp_path / "b")
    (b / "stage0" / "lm" / "report.json").write_text(json.dumps({"seconds": 2.0}))  # timings differ: not weights
    result = compare(a, b)
    assert result == {"identical": True, "files": 3, "differences": {}}
    assert main([str(a), str(b)]) == 0


def test_one_changed_value_signed_zero_missing_file_and_config_are_each_named(tmp_path: Path) -> None:
    a, b = _folder(tmp_path / "a"), _folder(tmp_path / "b")
    tensor = torch.arange(6, dtype=torch.float16).reshape(2, 3)
    tensor.view(torch.int16)[1, 2] += 1  # one float16 ulp
    save_file({"a": tensor, "b": -torch.zeros(())}, b / "model.safetensors")  # -0.0 == 0.0, but not the same bytes
    (b / "config.json").write_text(json.dumps({"hidden_size": 9}))
    (a / "stage0" / "lm" / "model.safetensors").unlink()
    result = compare(a, b)
    assert not result["identical"]
    assert result["differences"] == {
        "config.json": ["contents differ"],
        "model.safetensors": ["a (1 of 6 values differ)", "b (1 of 1 values differ)"],
        "stage0/lm/model.safetensors": ["only in the shipped folder"],
    }
    assert main([str(a), str(b)]) == 1


def test_a_missing_folder_is_refused_by_name(tmp_path: Path) -> None:
    a = _folder(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        compare(a, tmp_path / "nowhere")


def test_the_shipped_model_equals_itself(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[1] / "hub_configs" / "deem-toy"
    copy = shutil.copytree(shipped, tmp_path / "copy")
    assert compare(copy, shipped)["identical"]
