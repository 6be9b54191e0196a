"""Every benchmark script runs end to end in its quick mode (tiny config, one round), as `python -m benchmarks.X`
would: this proves they run, not how fast anything is (no timing assertions). Each runs in this process through
runpy (the imports are already paid for), on one thread, with the thread count restored afterwards."""

from __future__ import annotations

import json
import runpy
import sys

import pytest
import torch
from conftest import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `benchmarks` is a folder of scripts, not an installed package

from modeling_deem import DeemConfig
from processing import DeemProcessor

QUICK = {
    "benchmarks.bench_config": ["--quick"],
    "benchmarks.memory": ["hub_configs/deem-tiny", "--quick", "--lora-r", "4"],
    "benchmarks.csr_cost": ["--config", "tiny", "--rounds", "1"],
    "benchmarks.vqa": ["--configs", "tiny", "--batch-sizes", "2", "--rounds", "1", "--new-tokens", "2"],
    "benchmarks.t2i": ["--configs", "tiny", "--steps", "2", "--rounds", "1"],
    "benchmarks.interleaved": ["--configs", "tiny", "--steps", "1", "--rounds", "1"],
    "benchmarks.growth": ["--config", "tiny", "--images", "1", "2", "--lengths", "218", "240", "--prompt-lengths",
                          "100", "120", "--rounds", "1", "--new-tokens", "2"],
    "benchmarks.eval_feature_reuse": ["--questions", "2", "--pairs", "1", "--max-new-tokens", "2"],
    "benchmarks.mmfs_cost": ["--pairs", "1"],
    "benchmarks.eval_batching": ["--sizes", "tiny", "--pairs", "1", "--images", "2", "--per-image", "2",
                                 "--max-new-tokens", "2"],
}
# What each script's JSON must hold (the README and RESULTS.md read these).
KEYS = {
    "benchmarks.bench_config": ["llm_to_unet", "within_2x", "stage1_step", "machine", "command"],
    "benchmarks.memory": ["static", "optimizer_state_checks", "activation_checkpointing"],
    "benchmarks.csr_cost": ["stages"],
    "benchmarks.vqa": ["results", "target_met"],
    "benchmarks.t2i": ["results", "target_met"],
    "benchmarks.interleaved": ["results", "machine", "command"],
    "benchmarks.growth": ["images", "length", "generation"],
    "benchmarks.eval_feature_reuse": ["speedup", "same_answers"],
    "benchmarks.mmfs_cost": ["ratio_median"],
    "benchmarks.eval_batching": ["sizes"],
}


def run_module(module: str, arguments: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    threads = torch.get_num_threads()
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [module, *arguments])
    sys.modules.pop(module, None)  # another script may have imported it (growth imports vqa's helpers)
    torch.set_num_threads(1)  # as the scripts run (those without --threads too): no spinning on a shared machine
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("module", sorted(QUICK))
def test_benchmark_runs_in_quick_mode(module, tmp_path, monkeypatch, capsys):
    output = tmp_path / "result.json"
    run_module(module, [*QUICK[module], "--output", str(output)], monkeypatch)
    printed = capsys.readouterr().out
    assert printed.strip(), f"{module} printed no table"
    result = json.loads(output.read_text())
    for key in KEYS[module]:
        assert key in result, f"{module}'s JSON lacks {key!r}"
    if module == "benchmarks.memory":  # AdamW state on exactly the parameters that got a gradient (= that train)
        assert all(check["ok"] for check in result["optimizer_state_checks"])


def test_vae_encode_once_runs(monkeypatch, capsys):
    run_module("benchmarks.vae_encode_once", ["--decoder-size", "64", "--images", "1", "--repeats", "1"], monkeypatch)
    assert "speed-up" in capsys.readouterr().out


def test_bench_config_folder_is_current():
    """hub_configs/deem-bench is what `python -m benchmarks.bench_config --write` writes, and its processor loads."""
    from benchmarks.bench_config import BENCH, bench_config_dict

    assert DeemConfig.from_pretrained(BENCH).to_dict() == DeemConfig(**bench_config_dict()).to_dict()
    processor = DeemProcessor.from_pretrained(BENCH)
    config = DeemConfig.from_pretrained(BENCH)
    assert processor.image_processor.size == config.vision_config.image_size
    assert processor.image_processor.decoder_size == config.decoder_image_size
    tiny = DeemProcessor.from_pretrained(ROOT / "hub_configs" / "deem-tiny")
    assert processor.tokenizer.get_vocab() == tiny.tokenizer.get_vocab()
