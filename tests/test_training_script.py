"""The training script: stage defaults with command-line overrides, kill-and-resume, two CPU processes, LoRA."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "hub_configs" / "deem-tiny")
BASE = ["--config_name", TINY, "--dataset", "shapes", "--max_train_samples", "32", "--use_cpu",
        "--report_to", "none", "--logging_steps", "1", "--warmup_steps", "0", "--learning_rate", "1e-3",
        "--per_device_train_batch_size", "2", "--dataloader_num_workers", "0", "--image_size", "processor"]


def script(output_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainers.train_deem", "--output_dir", str(output_dir), *BASE, *extra]


def run(command: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses(state_file: Path) -> dict[int, tuple[float, ...]]:
    history = json.loads(state_file.read_text())["log_history"]
    parts = ("loss", "ntp_loss", "nip_loss", "csr_loss")
    return {e["step"]: tuple(e.get(p) for p in parts) for e in history if "csr_loss" in e}


def test_stage_recipe_fills_what_the_command_line_leaves(tmp_path):
    from trainers.train_deem import main

    trainer = main(["--output_dir", str(tmp_path), "--stage", "stage1", *BASE, "--max_steps", "1",
                    "--save_strategy", "no"])
    args = trainer.args
    assert (args.adam_beta2, args.adam_epsilon, args.weight_decay) == (0.995, 1e-6, 0.05)  # stage I recipe
    assert args.learning_rate == 1e-3 and args.per_device_train_batch_size == 2  # given on the command line
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "processor_config.json").exists()


def test_killed_training_resumes_to_the_same_result(tmp_path):
    steps = ["--max_steps", "12", "--save_steps", "2", "--seed", "7"]
    run(script(tmp_path / "straight", *steps))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(script(interrupted, *steps), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (interrupted / "checkpoint-6").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert killed, "training finished before it could be killed"
    assert not (interrupted / "model.safetensors").exists()

    run(script(interrupted, *steps, "--resume_from_checkpoint", str(interrupted / "checkpoint-4")))
    straight_losses = losses(tmp_path / "straight" / "checkpoint-12" / "trainer_state.json")
    resumed_losses = losses(interrupted / "checkpoint-12" / "trainer_state.json")
    assert sorted(resumed_losses) == list(range(1, 13))
    assert resumed_losses == straight_losses
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(interrupted / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_with_accelerate_launch(tmp_path):
    launcher = Path(sys.executable).parent / "accelerate"
    run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()),
         "-m", "trainers.train_deem", "--output_dir", str(tmp_path), *BASE, "--max_steps", "2",
         "--save_strategy", "no"])
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    final = torch.load(tmp_path / "training_args.bin", weights_only=False)
    assert final.world_size == 2
    assert (tmp_path / "model.safetensors").exists()
    logged = [entry for entry in history if "ntp_loss" in entry]
    assert [entry["step"] for entry in logged] == [1, 2] and all("csr_loss" in entry for entry in logged)
    assert logged[-1]["epoch"] == pytest.approx(2 * 2 * 2 / 32)  # 2 steps × 2 processes × batch 2 of 32 rows


def image_batch(folder: Path) -> dict:
    from processing import DeemProcessor
    from trainers import make_shapes_dataset

    processor = DeemProcessor.from_pretrained(folder)
    row = make_shapes_dataset(num_rows=1, seed=3)[0]
    return dict(processor(text=[processor.prompt("vqa", question="What colour is it?")], images=row["images"][:1]))


def test_lora_output_keeps_everything_the_stage_trained(tmp_path):
    from peft import PeftModel

    from modeling_deem import DeemForConditionalGeneration
    from trainers.train_deem import main

    base_dir = tmp_path / "base"
    main(["--output_dir", str(base_dir), "--stage", "stage1", *BASE, "--max_steps", "1", "--save_strategy", "no"])
    lora_dir = tmp_path / "lora"
    trainer = main(["--output_dir", str(lora_dir), "--stage", "stage2", "--model_name_or_path", str(base_dir),
                    *[a for a in BASE if a != TINY and a != "--config_name"], "--max_steps", "2",
                    "--save_strategy", "no", "--lora_r", "4"])
    trained = trainer.model
    names = [n for n, p in trained.named_parameters() if p.requires_grad]
    # The LLM's own weights train through LoRA only (its MMFS layers are DEEM's, trained in full).
    assert names and all("lora_" in n or ".mmfs." in n or not n.startswith("base_model.model.language_model.")
                         for n in names)
    assert not any(".original_module." in n for n in names)
    assert any("visual_resampler.modules_to_save" in n for n in names)
    assert not (lora_dir / "model.safetensors").exists()
    saved = load_file(lora_dir / "adapter_model.safetensors")
    assert any(k.startswith("base_model.model.visual_resampler.") for k in saved)
    assert any(".mmfs." in k for k in saved) and any("image_start_embedding" in k for k in saved)
    # The adapter records its base by absolute path, and the folder holds the processor.
    assert json.loads((lora_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir)
    assert (lora_dir / "processor_config.json").exists()

    batch = image_batch(lora_dir)
    base = DeemForConditionalGeneration.from_pretrained(base_dir)
    reloaded = PeftModel.from_pretrained(base, lora_dir).eval()
    trained.eval()
    with torch.no_grad():
        expected = trained(**batch).logits
        torch.testing.assert_close(reloaded(**batch).logits, expected)
        plain = DeemForConditionalGeneration.from_pretrained(base_dir).eval()
        assert (plain(**batch).logits - expected).abs().max() > 1e-3  # training changed what the image gives


def test_lora_resume_is_bit_exact(tmp_path):
    import shutil

    from trainers.train_deem import main

    base_dir = tmp_path / "base"
    main(["--output_dir", str(base_dir), "--stage", "stage1", *BASE, "--max_steps", "1", "--save_strategy", "no"])
    args = ["--stage", "stage2", "--model_name_or_path", str(base_dir),
            *[a for a in BASE if a != TINY and a != "--config_name"], "--max_steps", "4", "--save_steps", "2",
            "--lora_r", "4", "--seed", "5"]
    main(["--output_dir", str(tmp_path / "straight"), *args])
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "straight" / "checkpoint-2", resumed / "checkpoint-2")
    assert (resumed / "checkpoint-2" / "processor_config.json").exists()
    main(["--output_dir", str(resumed), *args, "--resume_from_checkpoint", str(resumed / "checkpoint-2")])
    straight_losses = losses(tmp_path / "straight" / "checkpoint-4" / "trainer_state.json")
    resumed_losses = losses(resumed / "checkpoint-4" / "trainer_state.json")
    assert sorted(resumed_losses) == [1, 2, 3, 4] and resumed_losses == straight_losses
    a = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_llava_jsonl_with_an_image_folder(tmp_path):
    from PIL import Image

    from trainers.train_deem import main

    images = tmp_path / "images"
    images.mkdir()
    lines = []
    for index, colour in enumerate(["red", "green", "blue", "red"]):
        Image.new("RGB", (48, 40), {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}[colour]).save(
            images / f"{index}.png")
        lines.append(json.dumps({"image": f"{index}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": colour}]}))
    (tmp_path / "llava.jsonl").write_text("\n".join(lines))
    trainer = main(["--output_dir", str(tmp_path / "out"), "--stage", "stage2", "--config_name", TINY,
                    "--dataset", str(tmp_path / "llava.jsonl"), "--data_format", "llava", "--image_root",
                    str(images), "--use_cpu", "--report_to", "none", "--max_steps", "2", "--logging_steps", "1",
                    "--per_device_train_batch_size", "2", "--save_strategy", "no"])
    # Stage II's recipe by default: 448 px, the whole image, no flip; and the saved processor says so.
    image_processor = trainer.data_collator.processor.image_processor
    assert (image_processor.size, image_processor.crop, image_processor.flip) == (448, "none", False)
    saved = json.loads((tmp_path / "out" / "processor_config.json").read_text())["image_processor"]
    assert (saved["size"], saved["crop"], saved["flip"]) == (448, "none", False)
    logs = [entry for entry in trainer.state.log_history if "ntp_loss" in entry]
    assert len(logs) == 2 and all("csr_loss" in entry for entry in logs)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["--output_dir", str(tmp_path / "bad"), "--stage", "stage2", "--config_name", TINY,
              "--dataset", str(tmp_path / "llava.jsonl"), "--data_format", "llava", "--use_cpu",
              "--report_to", "none", "--max_steps", "1", "--save_strategy", "no"])
