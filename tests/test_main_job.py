"""The README's main job runs end to end on the shipped toy DEEM (with fewer steps) and writes its outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_demo_fine_tunes_reloads_answers_and_draws(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "deem_demo.py"), "--output-dir", str(tmp_path / "demo"),
         "--steps", "2", "--questions", "4", "--inference-steps", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["reloaded_class"].endswith("DeemForConditionalGeneration")
    assert len(report["answers"]) == 4 and all(isinstance(a["answer"], str) for a in report["answers"])
    assert report["accuracy"] == sum(a["correct"] for a in report["answers"]) / 4
    assert {"ntp_loss", "csr_loss"} <= set(report["losses_last_log"])  # stage II: NTP + CSR
    assert "accuracy" in result.stdout and "truth" in result.stdout
    grid = Image.open(tmp_path / "demo" / "samples.png")
    assert grid.size[1] == 3 * 96
