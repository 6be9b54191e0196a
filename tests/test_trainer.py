"""DeemTrainer: logged loss parts, stage recipes (what trains, learning rates), checkpoints, the collator."""


import pytest
import torch
from conftest import TINY

from modeling_deem import DeemConfig, DeemForConditionalGeneration
from trainers import STAGES, DeemDataCollator, DeemTrainer, apply_stage, make_shapes_dataset
from trainers.stages import parameter_group

MMFS_GROUPS = ("mmfs", "mmfs_gate", "mmfs_offsets", "new_tokens")  # trained in every stage


@pytest.fixture(scope="module")
def shapes():
    return make_shapes_dataset(num_rows=24, seed=0)


def fresh_model(seed: int = 0) -> DeemForConditionalGeneration:
    torch.manual_seed(seed)
    return DeemForConditionalGeneration(DeemConfig.from_pretrained(TINY))


def train(model, processor, dataset, output_dir, stage, steps=6, **overrides):
    args = STAGES[stage].training_arguments(
        str(output_dir), max_steps=steps, warmup_steps=1, learning_rate=1e-3, per_device_train_batch_size=4,
        **{"logging_steps": 2, "save_strategy": "no", "report_to": "none", "use_cpu": True, "seed": 0, **overrides},
    )
    trainer = DeemTrainer(model=model, args=args, train_dataset=dataset, stage=stage,
                          data_collator=DeemDataCollator(processor, decoder_views=model.config.with_image_decoder))
    trainer.train()
    return trainer


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed_groups(before, after):
    return {parameter_group(k) for k in before if not torch.equal(before[k], after[k])}


def test_collator_masks_padding_placeholders_and_prompts(processor, shapes):
    collator = DeemDataCollator(processor)
    batch = collator([shapes[0], shapes[1]])
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["decoder_pixel_values"].shape == (2, 3, 32, 32)
    assert batch["image_masks"].shape == (2, 64, 64)
    labels, ids = batch["labels"], batch["input_ids"]
    assert (labels[ids == processor.image_token_id] == -100).all()
    assert (labels[batch["attention_mask"] == 0] == -100).all()
    chat = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                         {"role": "assistant", "content": "red"}], "images": shapes[0]["images"]}
    batch = collator([chat])
    targets = batch["labels"][0][batch["labels"][0] != -100]
    assert processor.tokenizer.decode(targets).strip() == "red</s>"


def test_trainer_logs_each_loss_and_lowers_them(processor, shapes, tmp_path):
    from transformers import TrainerCallback

    seen = []

    class Integration(TrainerCallback):  # what report_to integrations receive
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    model = fresh_model()
    args = STAGES["stage1"].training_arguments(str(tmp_path), max_steps=30, warmup_steps=1, learning_rate=1e-3,
                                               per_device_train_batch_size=4, logging_steps=10, save_strategy="no",
                                               report_to="none", use_cpu=True, seed=0)
    trainer = DeemTrainer(model=model, args=args, train_dataset=shapes, stage="stage1",
                          data_collator=DeemDataCollator(processor), callbacks=[Integration()])

    def evaluate():  # the same diffusion noise and timesteps before and after: the parts are comparable
        torch.manual_seed(123)
        return trainer.evaluate(eval_dataset=shapes.select(range(16)))

    before = evaluate()
    trainer.train()
    after = evaluate()
    assert sum({"ntp_loss", "nip_loss", "csr_loss"} <= set(entry) for entry in seen) == 3
    logs = [entry for entry in trainer.state.log_history if "ntp_loss" in entry]
    assert len(logs) == 3
    assert {"eval_loss", "eval_ntp_loss", "eval_nip_loss", "eval_csr_loss"} <= set(after)
    for part in ("eval_ntp_loss", "eval_nip_loss", "eval_csr_loss"):
        assert after[part] < before[part], (part, before[part], after[part])


def test_stage_one_trains_only_the_image_side(processor, shapes, tmp_path):
    model = fresh_model()
    before = snapshot(model)
    trainer = train(model, processor, shapes, tmp_path, "stage1")
    changed = changed_groups(before, snapshot(model))
    assert changed == {"vision_trunk", "image_side", "condition_side", "mask_extractor", "mmfs", "mmfs_gate",
                       "mmfs_offsets", "decoder_mmfs", "new_tokens"}, changed
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    frozen = [n for n, p in model.named_parameters()
              if n.startswith(("language_model.", "unet.", "vae.")) and ".mmfs." not in n]
    assert frozen and not any(id(model.get_parameter(n)) in optimised for n in frozen)
    assert all(not trainer.optimizer.state.get(model.get_parameter(n)) for n in frozen)
    rates = sorted({group["initial_lr"] for group in trainer.optimizer.param_groups})
    # The paper's 2e-5 (pretrained trunk), 1e-5 (MMFS sampling offsets) and 1e-4 (the rest), scaled to lr=1e-3.
    assert rates == pytest.approx([1e-4, 2e-4, 1e-3])
    names = {id(p): n for n, p in model.named_parameters()}
    for group in trainer.optimizer.param_groups:
        for parameter in group["params"]:
            name = names[id(parameter)]
            if name.endswith(".mmfs.gate") or "sampling_offsets" in name:
                assert group["weight_decay"] == 0.0, name
            if "sampling_offsets" in name:
                assert group["initial_lr"] == pytest.approx(1e-4), name


def test_stages_two_and_three_start_from_stage_one(processor, shapes, tmp_path):
    model = fresh_model()
    train(model, processor, shapes, tmp_path / "s1", "stage1", steps=2)
    model.save_pretrained(tmp_path / "stage1")

    stage2 = DeemForConditionalGeneration.from_pretrained(tmp_path / "stage1")
    before = snapshot(stage2)
    train(stage2, processor, shapes, tmp_path / "s2", "stage2", steps=3)
    changed = changed_groups(before, snapshot(stage2))
    assert changed <= {"language_model", "image_side", "condition_side", *MMFS_GROUPS, "decoder_mmfs"}
    assert "language_model" in changed
    assert "vision_trunk" not in changed and "image_decoder" not in changed

    stage3 = DeemForConditionalGeneration.from_pretrained(tmp_path / "stage1", with_image_decoder=False)
    assert not hasattr(stage3, "unet")
    before = snapshot(stage3)
    trainer = train(stage3, processor, shapes, tmp_path / "s3", "stage3", steps=3)
    changed = changed_groups(before, snapshot(stage3))
    assert changed <= {"language_model", "image_side", "mask_extractor", *MMFS_GROUPS} and "language_model" in changed
    logs = [entry for entry in trainer.state.log_history if "ntp_loss" in entry]
    assert logs and all("csr_loss" not in entry and "nip_loss" not in entry for entry in logs)


def test_apply_stage_refuses_unknown_stage_and_missing_decoder():
    model = fresh_model()
    with pytest.raises(ValueError, match="Unknown stage 'stage9'"):
        apply_stage(model, "stage9")
    kwargs = DeemConfig.from_pretrained(TINY).to_dict()
    decoderless = DeemForConditionalGeneration(DeemConfig.from_pretrained(TINY, with_image_decoder=False))
    with pytest.raises(ValueError, match="needs the diffusion decoder"):
        apply_stage(decoderless, "stage2")
    assert kwargs["with_image_decoder"]


def test_trainer_checkpoint_loads_with_from_pretrained(processor, shapes, tmp_path):
    model = fresh_model()
    train(model, processor, shapes, tmp_path, "stage1", steps=2, save_strategy="steps", save_steps=2)
    checkpoint = tmp_path / "checkpoint-2"
    assert (checkpoint / "model.safetensors").exists()
    loaded = DeemForConditionalGeneration.from_pretrained(checkpoint)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_trl_sft_trainer_keeps_the_csr_term(processor, shapes, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig

    from trainers import DeemSFTTrainer

    rows = Dataset.from_dict({
        "messages": [[{"role": "user", "content": "<image> What colour is the shape?"},
                      {"role": "assistant", "content": f"{colour}."}] for colour in shapes["colour"][:8]],
        "images": shapes["images"][:8],
    })
    model = fresh_model()
    before = snapshot(model)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, use_cpu=True,
                     report_to="none", logging_steps=1, save_strategy="no", learning_rate=1e-4,
                     gradient_checkpointing=False)
    trainer = DeemSFTTrainer(model=model, args=args, processing_class=processor, train_dataset=rows, stage="stage2")
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "ntp_loss" in entry]
    assert len(logs) == 3 and all("csr_loss" in entry and "nip_loss" not in entry for entry in logs)
    changed = changed_groups(before, snapshot(model))
    assert "language_model" in changed
    assert changed <= {"language_model", "image_side", "condition_side", *MMFS_GROUPS, "decoder_mmfs"}


def test_sft_with_a_peft_config_still_trains_the_image_side(processor, shapes, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig

    from trainers import DeemSFTTrainer

    rows = Dataset.from_dict({
        "messages": [[{"role": "user", "content": "<image> What colour is the shape?"},
                      {"role": "assistant", "content": f"{colour}."}] for colour in shapes["colour"][:4]],
        "images": shapes["images"][:4],
    })
    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, use_cpu=True,
                     report_to="none", save_strategy="no", gradient_checkpointing=False)
    lora = LoraConfig(r=2, target_modules=r"language_model\..*\.(q_proj|v_proj)")
    trainer = DeemSFTTrainer(model=fresh_model(), args=args, processing_class=processor, train_dataset=rows,
                             stage="stage2", peft_config=lora)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert any("visual_resampler.modules_to_save" in n for n in trainable)
    assert any(".mmfs.modules_to_save" in n for n in trainable) and any("lora_" in n for n in trainable)
    assert lora.modules_to_save is None  # the caller's config is left as it was
    trainer.train()


def test_plain_training_arguments_work_too(processor, shapes, tmp_path):
    """Without a stage recipe: ordinary TrainingArguments (raw columns kept for the collator), one learning rate."""
    from transformers import TrainingArguments

    model = fresh_model()
    args = TrainingArguments(str(tmp_path), max_steps=2, per_device_train_batch_size=2, use_cpu=True,
                             report_to="none", save_strategy="no", logging_steps=1)
    trainer = DeemTrainer(model=model, args=args, train_dataset=shapes.to_iterable_dataset(),
                          data_collator=DeemDataCollator(processor))
    trainer.train()
    assert len([e for e in trainer.state.log_history if "csr_loss" in e]) == 2
    assert not trainer.args.remove_unused_columns and trainer.args.accelerator_config.dispatch_batches is False


def test_a_misspelt_override_is_an_error_not_ignored(tmp_path):
    with pytest.raises(TypeError, match="leraning_rate"):
        STAGES["stage1"].training_arguments(str(tmp_path), leraning_rate=1e-3)
