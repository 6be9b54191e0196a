"""Scale-out with the shipped config files: DeepSpeed ZeRO-2 through `accelerate launch` on two CPU processes
(gloo). The test needs `deepspeed` (not a dependency of this package), so it is skipped where it is not installed.

FSDP2 on CPU processes is not tested: accelerate 1.15 keeps CPU processes MULTI_CPU and trains them with DDP
even under `--use_fsdp` (silently), and making it shard would mean patching accelerate's state, which this
project does not do. The FSDP configs are for GPUs.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "hub_configs" / "deem-tiny")
ARGS = ["--stage", "stage1", "--config_name", TINY, "--report_to", "none", "--logging_steps", "1",
        "--warmup_steps", "0", "--learning_rate", "1e-3", "--per_device_train_batch_size", "2",
        "--dataloader_num_workers", "0", "--image_size", "processor", "--max_steps", "4", "--save_steps", "2",
        "--seed", "7"]


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    """Caption-then-image rows only: every batch has a NIP target. FSDP2 and ZeRO need every process to give
    gradients to the same parameters, and a stage-I batch without one leaves the NIP condition side
    (context_proj, condition_resampler, negative_condition) without any: the processes' reductions then differ."""
    from trainers import make_shapes_dataset

    folder = tmp_path_factory.mktemp("scale_out") / "rows"
    make_shapes_dataset(num_rows=64, seed=0).select(range(0, 64, 2)).save_to_disk(str(folder))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, output_dir: Path, data: Path, *extra: str, env: dict | None = None) -> None:
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(ROOT / config),
               "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "trainers.train_deem",
               "--output_dir", str(output_dir), "--dataset", str(data), *ARGS, *extra]
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": python_path,
           **(env or {})}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def straight_and_resumed(tmp_path: Path, launch_run) -> tuple[Path, Path]:
    """A 4-step run saving every 2 steps, and a run resumed from a copy of its checkpoint-2."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launch_run(straight)
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    launch_run(resumed, "--resume_from_checkpoint", str(resumed / "checkpoint-2"))
    return straight, resumed


def losses(state_file: Path) -> dict[int, tuple[float, ...]]:
    history = json.loads(state_file.read_text())["log_history"]
    return {e["step"]: tuple(e.get(p) for p in ("loss", "ntp_loss", "nip_loss", "csr_loss"))
            for e in history if "ntp_loss" in e}


def assert_resumed_exactly(straight: Path, resumed: Path) -> None:
    """Every step's losses (all four parts) and the final weights, bit for bit."""
    straight_losses = losses(straight / "checkpoint-4" / "trainer_state.json")
    assert sorted(straight_losses) == [1, 2, 3, 4] and all(None not in v for v in straight_losses.values())
    assert losses(resumed / "checkpoint-4" / "trainer_state.json") == straight_losses
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_normal_checkpoint(folder: Path, trained: dict[str, torch.Tensor]) -> None:
    """The folder reloads (strictly: every weight is there) to exactly `trained`; its remote code is DEEM's."""
    from modeling_deem import DeemForConditionalGeneration

    saved = load_file(folder / "model.safetensors")
    reloaded = DeemForConditionalGeneration.from_pretrained(folder).state_dict()
    assert saved.keys() <= trained.keys() and saved.keys() <= reloaded.keys()
    assert all(torch.equal(reloaded[k], trained[k]) for k in saved)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == auto_map["AutoModelForImageTextToText"] == \
        "modeling_deem.DeemForConditionalGeneration"
    assert (folder / "modeling_deem.py").exists() and not list(folder.glob("_fsdp*.py"))


def test_deepspeed_zero2_on_two_cpu_processes_saves_a_normal_checkpoint_and_resumes_exactly(tmp_path, rows):
    pytest.importorskip("deepspeed")

    def run(output_dir: Path, *extra: str) -> None:
        # No --use_cpu (accelerate would then use DDP, not DeepSpeed); gloo: on CPU, accelerate would otherwise
        # count one process while DeepSpeed reduces over two.
        launch("configs/accelerate_deepspeed_zero2.yaml", output_dir, rows, "--ddp_backend", "gloo", *extra,
               env={"DS_ACCELERATOR": "cpu"})

    straight, resumed = straight_and_resumed(tmp_path, run)
    assert torch.load(straight / "training_args.bin", weights_only=False).world_size == 2
    # ZeRO partitions the optimizer states: one file per process.
    states = straight / "checkpoint-4" / "global_step4"
    assert sorted(p.name for p in states.glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert_normal_checkpoint(straight, load_file(straight / "checkpoint-4" / "model.safetensors"))
    assert_resumed_exactly(straight, resumed)
