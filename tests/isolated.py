"""Run Python in a fresh process that cannot import this repository's packages (as a hub user would)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

OUR_PACKAGES = ("modeling_deem", "processing", "trainers", "evaluation")

_PRELUDE = f"""
import sys, importlib.abc
class _RefuseOurPackages(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {OUR_PACKAGES!r}:
            raise ImportError(f"{{name}} must not be importable here (remote-code test)")
        return None
sys.meta_path.insert(0, _RefuseOurPackages())
"""


def run_isolated(code: str, cwd: Path, timeout: int = 300) -> str:
    """Runs `code` outside the repository with our packages blocked; returns stdout, raises with stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(cwd / "hf_modules"))
    result = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"isolated process failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout
