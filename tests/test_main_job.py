"""The README's main job (the toy DEEM) and the random deem-tiny job run end to end (with fewer steps) and write
their outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_demo_writes_grid_and_report(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "deem_demo.py"), "--output-dir", str(tmp_path / "demo"),
         "--steps", "4", "--inference-steps", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["reloaded_class"].endswith("DeemForConditionalGeneration")
    assert isinstance(report["pipeline_answer"], str)
    assert {"ntp_loss", "nip_loss", "csr_loss"} <= set(report["losses_last_log"])
    grid = Image.open(tmp_path / "demo" / "samples.png")
    assert grid.size[1] == 3 * 96


def test_toy_main_job_answers_fresh_questions_and_writes_its_samples(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "toy_demo.py"), "--output-dir", str(tmp_path / "demo"),
         "--steps", "2", "--questions", "6", "--inference-steps", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["model"].endswith("deem-toy") and report["reloaded_class"].endswith("DeemForConditionalGeneration")
    assert len(report["answers"]) == 6 and all({"question", "answer", "truth", "correct"} <= set(a)
                                                for a in report["answers"])
    assert report["accuracy"] == sum(a["correct"] for a in report["answers"]) / 6
    assert report["guidance_scale"] == 1.0  # the toy SD draws clean shapes unguided
    match = report["generation_caption_match"]  # by the shipped toy CLIP (2 sampling steps: values, not quality)
    assert set(match) == {"own_captions", "other_captions"} and "toy CLIP score" in result.stdout
    assert "accuracy" in result.stdout and all(a["truth"] in result.stdout for a in report["answers"])
    grid = Image.open(tmp_path / "demo" / "samples.png")
    assert grid.size[1] == 3 * 96  # inputs, reconstructions, generations
