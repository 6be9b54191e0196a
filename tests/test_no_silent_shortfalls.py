"""Training and generation never do less than asked without saying so (issue 10, items 5 and 7)."""

import json

import pytest
import torch

from modeling_deem import DeemConfig, DeemForConditionalGeneration
from trainers import STAGES


def test_training_with_images_but_no_decoder_views_warns_that_only_ntp_runs(tiny_model, interleaved_batch, caplog):
    from transformers.utils import logging

    logging.enable_propagation()
    batch = {k: v for k, v in interleaved_batch.items() if k != "decoder_pixel_values"}
    tiny_model.train()
    from modeling_deem import modeling_deem as module

    module.logger.warning_once.cache_clear()
    out = tiny_model(**batch)
    assert out.nip_loss is None and out.csr_loss is None
    assert "only NTP is computed" in caplog.text and "nip_loss_weight=5.0" in caplog.text
    caplog.clear()
    tiny_model.config.nip_loss_weight = tiny_model.config.csr_loss_weight = 0.0
    module.logger.warning_once.cache_clear()
    tiny_model(**batch)  # NTP-only asked for: nothing to say
    assert "only NTP" not in caplog.text


def test_a_run_shorter_than_its_warm_up_keeps_the_recipes_warm_up_fraction(tmp_path, caplog):
    from transformers.utils import logging

    logging.enable_propagation()
    args = STAGES["stage1"].training_arguments(str(tmp_path), max_steps=20, use_cpu=True, report_to="none")
    assert args.warmup_steps == 2  # stage I warms up for 1,000 of 10,000 steps: 10 %
    assert "warming up for 2 steps" in caplog.text
    assert STAGES["stage2"].training_arguments(str(tmp_path), max_steps=40, use_cpu=True).warmup_steps == 2
    # Always shorter than the run, so the peak is reached (and DeemTrainer has nothing left to warn about).
    assert STAGES["stage1"].training_arguments(str(tmp_path), max_steps=1, use_cpu=True).warmup_steps == 0
    # A warm-up shorter than the run, or a fraction, is left alone.
    assert STAGES["stage1"].training_arguments(str(tmp_path), max_steps=2000, use_cpu=True).warmup_steps == 1000
    assert STAGES["stage1"].training_arguments(str(tmp_path), max_steps=20, warmup_steps=0.5,
                                               use_cpu=True).warmup_steps == 0.5


def test_the_readme_stage1_example_reaches_its_peak_learning_rate(tmp_path):
    from trainers.train_deem import main

    trainer = main(["--stage", "stage1", "--config_name", "hub_configs/deem-tiny", "--dataset", "shapes",
                    "--output_dir", str(tmp_path), "--max_steps", "4", "--use_cpu", "--report_to", "none",
                    "--max_train_samples", "8", "--per_device_train_batch_size", "2", "--logging_steps", "1",
                    "--save_strategy", "no", "--dataloader_num_workers", "0"])
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    peak = trainer.optimizer.param_groups[0]["initial_lr"]  # the logged group's recipe rate
    assert trainer.args.warmup_steps == 1 and max(rates) == pytest.approx(peak)  # then cosine down


def test_zero_inference_steps_is_refused(tiny_model):
    condition = torch.zeros(1, tiny_model.config.num_image_tokens, tiny_model.config.cross_attention_dim)
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match="num_inference_steps"):
            tiny_model.sample_images(condition, num_inference_steps=steps)


def test_a_config_dtype_that_is_not_a_torch_dtype_is_refused(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["dtype"] = "not-a-dtype"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'not-a-dtype' is not a torch dtype"):
        DeemForConditionalGeneration.from_pretrained(tmp_path)
    config["dtype"] = "float32"
    config["text_config"]["dtype"] = "float33"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="text_config.*float33"):
        DeemConfig.from_pretrained(tmp_path)
