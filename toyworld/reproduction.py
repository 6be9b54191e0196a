"""Is a rebuilt deem-toy the shipped one, bit for bit?

`scripts/reproduce_deem_toy.sh` reruns the study's shipped run from nothing (stage 0 included), ships it into a
scratch folder and calls this to compare it with `hub_configs/deem-toy`: every tensor of every safetensors file
must have the same name, dtype, shape and bytes, and every config, tokenizer and template file the same text.
Reports (they hold timings), the study-settings record (it lists the whole study's seeds) and the model card are
not weights and are left out.

    python -m toyworld.reproduction outputs/toy-repro/ship hub_configs/deem-toy
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

NOT_COMPARED = ("report.json", "settings.json", "README.md", "samples.png", "samples.json")


def _compared_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name not in NOT_COMPARED}


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bytes (NaNs and signed zeros compare as stored, which `==` would not)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def _tensor_differences(rebuilt: Path, shipped: Path) -> list[str]:
    """Names of the tensors whose dtype, shape or bytes differ, or that only one file has."""
    differences = []
    with safe_open(rebuilt, "pt") as a, safe_open(shipped, "pt") as b:
        names_a, names_b = set(a.keys()), set(b.keys())
        differences += [f"{name} (only in the rebuilt file)" for name in sorted(names_a - names_b)]
        differences += [f"{name} (only in the shipped file)" for name in sorted(names_b - names_a)]
        for name in sorted(names_a & names_b):
            x, y = a.get_tensor(name), b.get_tensor(name)
            if x.dtype != y.dtype or x.shape != y.shape:
                differences.append(f"{name} ({x.dtype} {tuple(x.shape)} vs {y.dtype} {tuple(y.shape)})")
                continue
            unequal = _bytes(x) != _bytes(y)
            if unequal.any():
                changed = int(unequal.view(x.numel(), -1).any(-1).sum())
                differences.append(f"{name} ({changed} of {x.numel()} values differ)")
    return differences


def compare(rebuilt: str | Path, shipped: str | Path) -> dict[str, Any]:
    """{'identical': bool, 'files': how many compared, 'differences': {file: [what differs]}}."""
    rebuilt, shipped = Path(rebuilt), Path(shipped)
    for folder in (rebuilt, shipped):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder: nothing to compare.")
    files_a, files_b = _compared_files(rebuilt), _compared_files(shipped)
    differences: dict[str, list[str]] = {}
    for name in sorted(files_a - files_b):
        differences[name] = ["only in the rebuilt folder"]
    for name in sorted(files_b - files_a):
        differences[name] = ["only in the shipped folder"]
    for name in sorted(files_a & files_b):
        a, b = rebuilt / name, shipped / name
        if name.endswith(".safetensors"):
            found = _tensor_differences(a, b)
        else:
            found = [] if a.read_bytes() == b.read_bytes() else ["contents differ"]
        if found:
            differences[name] = found
    return {"identical": not differences, "files": len(files_a | files_b), "differences": differences}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toyworld.reproduction", description=__doc__.split("\n\n")[0])
    parser.add_argument("rebuilt")
    parser.add_argument("shipped", nargs="?", default="hub_configs/deem-toy")
    args = parser.parse_args(argv)
    result = compare(args.rebuilt, args.shipped)
    print(json.dumps(result, indent=2))
    print("bit for bit: the same" if result["identical"] else
          f"NOT the same: {len(result['differences'])} of {result['files']} files differ")
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
