"""Condition alignment (trainers.condition_alignment): DEEM's NIP condition mapper learns to give a frozen text
encoder's states for the same captions; nothing else in the model (nor the text encoder) changes; bad inputs are
refused by name; the command line trains and saves a loadable model from local folders."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import TINY
from datasets import Dataset
from transformers import CLIPTextConfig, CLIPTextModel, TrainingArguments

from modeling_deem import DeemConfig, DeemForConditionalGeneration
from processing import DeemProcessor
from trainers.condition_alignment import (
    ConditionAlignmentCollator,
    ConditionAlignmentTrainer,
    diffusion_model_path,
    load_captions,
    main,
)

CAPTIONS = ["a red circle", "two blue squares on grey", "a green star at the top", "a small yellow cross",
            "a purple triangle and a red circle", "an orange drop on white"] * 4


def text_encoder(width: int = 32, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(vocab_size=512, hidden_size=width, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, max_position_embeddings=80, bos_token_id=1,
                                        eos_token_id=2, pad_token_id=3))


def text_tokenizer(processor: DeemProcessor, length: int = 77):
    tokenizer = copy.deepcopy(processor.tokenizer)
    tokenizer.model_max_length = length
    return tokenizer


def model_with_processor(processor: DeemProcessor, seed: int = 0) -> DeemForConditionalGeneration:
    torch.manual_seed(seed)
    model = DeemForConditionalGeneration(DeemConfig.from_pretrained(TINY))
    model.processor = processor
    return model


def arguments(output_dir, steps: int = 8) -> TrainingArguments:
    return TrainingArguments(str(output_dir), max_steps=steps, learning_rate=1e-2, per_device_train_batch_size=6,
                             weight_decay=0.0, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
                             seed=0, disable_tqdm=True)


def alignment_error(model, encoder, tokenizer, processor) -> float:
    batch = ConditionAlignmentCollator(processor, tokenizer)([{"caption": c} for c in CAPTIONS[:6]])
    with torch.no_grad():
        target = encoder(batch["target_input_ids"]).last_hidden_state[:, : model.config.num_image_tokens]
        condition = model.prompt_conditions(batch["input_ids"], batch["attention_mask"])
    return float(torch.nn.functional.mse_loss(condition, target))


def test_alignment_moves_the_condition_to_the_text_encoder_and_only_the_mapper_learns(processor, tmp_path) -> None:
    model, encoder, tokenizer = model_with_processor(processor), text_encoder(), text_tokenizer(processor)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    encoder_before = {k: v.clone() for k, v in encoder.state_dict().items()}
    error_before = alignment_error(model.eval(), encoder, tokenizer, processor)
    trainer = ConditionAlignmentTrainer(model, arguments(tmp_path, steps=30), text_encoder=encoder,
                                        text_tokenizer=tokenizer, train_dataset=Dataset.from_dict({"caption": CAPTIONS}))
    first_eval = trainer.evaluate(Dataset.from_dict({"caption": CAPTIONS[:6]}))["eval_loss"]
    trainer.train()
    assert alignment_error(model.eval(), encoder, tokenizer, processor) < 0.5 * error_before
    assert trainer.evaluate(Dataset.from_dict({"caption": CAPTIONS[:6]}))["eval_loss"] < 0.5 * first_eval
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"context_proj", "condition_resampler"}
    assert all(torch.equal(v, encoder_before[k]) for k, v in encoder.state_dict().items())


def test_prompt_conditions_carry_gradients_only_when_asked(processor) -> None:
    model = model_with_processor(processor)
    batch = ConditionAlignmentCollator(processor, text_tokenizer(processor))([{"caption": "a red circle"}])
    assert model.prompt_conditions(batch["input_ids"], batch["attention_mask"], with_grad=True).requires_grad
    assert not model.prompt_conditions(batch["input_ids"], batch["attention_mask"]).requires_grad
    with torch.no_grad():
        assert not model.prompt_conditions(batch["input_ids"], batch["attention_mask"], with_grad=True).requires_grad


def test_collator_gives_generation_prompts_and_full_length_targets(processor) -> None:
    tokenizer = text_tokenizer(processor, length=80)
    rows = [{"caption": "a red circle"}, {"caption": CAPTIONS[4]}]
    batch = ConditionAlignmentCollator(processor, tokenizer)(rows)
    assert batch["target_input_ids"].shape == (2, 80)
    tokenizer.padding_side = "left"  # the targets' positions are the encoder's: always right-padded
    assert torch.equal(ConditionAlignmentCollator(processor, tokenizer)(rows)["target_input_ids"],
                       batch["target_input_ids"])
    assert tokenizer.padding_side == "left"
    # A tokenizer without a length limit (model_max_length 1e30) pads to the trainer's bound instead.
    unbounded = ConditionAlignmentCollator(processor, text_tokenizer(processor, length=int(1e30)), target_length=80)
    assert torch.equal(unbounded(rows)["target_input_ids"], batch["target_input_ids"])
    assert batch["attention_mask"][:, -1].all() and not batch["attention_mask"][0, 0]  # left-padded
    with pytest.raises(KeyError, match="'caption'"):
        ConditionAlignmentCollator(processor, tokenizer)([{"text": "a red circle"}])
    with pytest.raises(ValueError, match="non-empty string"):
        ConditionAlignmentCollator(processor, tokenizer)([{"caption": "  "}])


def test_trainer_refuses_a_text_encoder_that_cannot_be_the_target(processor, tmp_path) -> None:
    model, data = model_with_processor(processor), Dataset.from_dict({"caption": CAPTIONS})
    with pytest.raises(ValueError, match="width 48 is not the UNet's cross_attention_dim 32"):
        ConditionAlignmentTrainer(model, arguments(tmp_path), text_encoder=text_encoder(width=48),
                                  text_tokenizer=text_tokenizer(processor), train_dataset=data)
    with pytest.raises(ValueError, match="77 tokens but the text encoder gives 32"):
        ConditionAlignmentTrainer(model, arguments(tmp_path), text_encoder=text_encoder(),
                                  text_tokenizer=text_tokenizer(processor, length=32), train_dataset=data)
    short_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=512, hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=40))
    with pytest.raises(ValueError, match="encoder max_position_embeddings 40"):
        ConditionAlignmentTrainer(model, arguments(tmp_path), text_encoder=short_encoder,
                                  text_tokenizer=text_tokenizer(processor, length=int(1e30)), train_dataset=data)
    without_decoder = DeemForConditionalGeneration(DeemConfig.from_pretrained(TINY, with_image_decoder=False))
    with pytest.raises(ValueError, match="image decoder"):
        ConditionAlignmentTrainer(without_decoder, arguments(tmp_path), text_encoder=text_encoder(),
                                  text_tokenizer=text_tokenizer(processor), train_dataset=data)


def test_caption_files_are_read_by_extension_and_bad_ones_named(tmp_path) -> None:
    (tmp_path / "c.txt").write_text("a red circle\na blue square\n")
    assert load_captions(tmp_path / "c.txt")["text"] == ["a red circle", "a blue square"]
    with pytest.raises(ValueError, match="c.tsv"):
        load_captions(tmp_path / "c.tsv")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_captions(tmp_path / "missing.jsonl")


def test_command_line_aligns_a_saved_model_against_its_own_diffusion_folder(processor, tmp_path) -> None:
    model = model_with_processor(processor)
    model.config.diffusion_model_name_or_path = "sd"
    model.save_pretrained(tmp_path / "deem")
    text_encoder().save_pretrained(tmp_path / "deem" / "sd" / "text_encoder")
    text_tokenizer(processor).save_pretrained(tmp_path / "deem" / "sd" / "tokenizer")
    assert diffusion_model_path(tmp_path / "deem", model.config) == str(tmp_path / "deem" / "sd")
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps({"caption": c}) + "\n" for c in CAPTIONS))
    argv = ["--model_name_or_path", str(tmp_path / "deem"), "--captions", str(tmp_path / "captions.jsonl"),
            "--output_dir", str(tmp_path / "aligned"), "--max_steps", "3", "--per_device_train_batch_size", "4",
            "--use_cpu", "--report_to", "none", "--save_strategy", "no"]
    main(argv)
    aligned = DeemForConditionalGeneration.from_pretrained(tmp_path / "aligned")
    original = DeemForConditionalGeneration.from_pretrained(tmp_path / "deem")
    assert not torch.equal(aligned.context_proj.weight, original.context_proj.weight)
    assert torch.equal(aligned.unet.conv_in.weight, original.unet.conv_in.weight)
    with pytest.raises(ValueError, match="no 'label' column"):
        main([*argv, "--caption_column", "label"])
    (tmp_path / "gaps.jsonl").write_text("".join(json.dumps({"caption": c}) + "\n" for c in ["a red circle", "", " "]))
    with pytest.raises(ValueError, match=r"2 empty or missing captions \(rows \[1, 2\]\)"):
        main([*argv[:2], "--captions", str(tmp_path / "gaps.jsonl"), *argv[4:]])
    model.config.diffusion_model_name_or_path = str(tmp_path / "nowhere")
    model.save_pretrained(tmp_path / "lost")
    with pytest.raises(OSError, match="No text encoder and tokenizer at .*nowhere"):
        main(["--model_name_or_path", str(tmp_path / "lost"), *argv[2:]])


def test_training_leaves_the_processor_and_the_cache_setting_as_they_were(processor, tmp_path) -> None:
    model = model_with_processor(processor)
    padding_before = json.loads(processor.tokenizer.backend_tokenizer.to_str())["padding"]
    assert "use_cache" not in model.config.__dict__
    trainer = ConditionAlignmentTrainer(model, arguments(tmp_path, steps=1), text_encoder=text_encoder(),
                                        text_tokenizer=text_tokenizer(processor),
                                        train_dataset=Dataset.from_dict({"caption": CAPTIONS}))
    trainer.train()
    trainer.save_model()
    assert json.loads((tmp_path / "tokenizer.json").read_text())["padding"] == padding_before
    assert "use_cache" not in json.loads((tmp_path / "config.json").read_text())
    assert "use_cache" not in model.config.__dict__
