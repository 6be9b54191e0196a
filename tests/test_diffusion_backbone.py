"""DEEM with the diffusion UNet as (part of) its visual backbone: features, processor, Trainer, pipeline, LoRA."""

import numpy as np
import pytest
import torch
from conftest import TINY
from isolated import run_isolated
from PIL import Image

from modeling_deem import DeemForConditionalGeneration
from modeling_deem.tiny import tiny_config
from processing import DeemDiffusionProcessor, DeemProcessor
from trainers import STAGES, DeemDataCollator, DeemTrainer, make_shapes_dataset
from trainers.stages import parameter_group

FEATURES = {"timestep": 100, "up_blocks": [0, 1], "grid_size": 4, "combine": "concat", "caption_dropout_prob": 0.3,
            "text_encoder_config": {"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64,
                                    "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16},
            "uncond_token_ids": [1, 2], "pad_token_id": 3}


def diffusion_model(backbone="both", **features):
    torch.manual_seed(0)
    return DeemForConditionalGeneration(tiny_config(vision_backbone=backbone,
                                                    diffusion_features_config={**FEATURES, **features}))


@pytest.fixture(scope="module")
def diffusion_processor():
    base = DeemProcessor.from_pretrained(TINY)
    condition = DeemProcessor.from_pretrained(TINY).tokenizer
    condition.model_max_length = 16
    return DeemDiffusionProcessor(base.image_processor, base.tokenizer, condition)


def picture(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8))


def test_question_conditioned_features(diffusion_processor):
    model = diffusion_model().eval()
    inputs = diffusion_processor(text=["<image> Is there a cat?", "<image> What colour is it?"],
                                 images=[picture(0), picture(0)], padding_side="left")
    assert inputs["diffusion_pixel_values"].shape == (2, 3, 32, 32)
    assert diffusion_processor.condition_tokenizer.decode(inputs["condition_input_ids"][0],
                                                          skip_special_tokens=True).strip() == "Is there a cat?"
    features = model.get_image_features(**{k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")})
    assert features.image_embeds.shape == (2, 77, 32)
    assert not torch.allclose(features.image_embeds[0], features.image_embeds[1])  # same image, other question
    again = model.get_image_features(**{k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")})
    torch.testing.assert_close(features.image_embeds, again.image_embeds)  # fixed noise: deterministic
    tokens = model.diffusion_features(model.unet, model.vae, model.noise_scheduler, model.diffusion_text_encoder,
                                      inputs["diffusion_pixel_values"], inputs["condition_input_ids"],
                                      inputs["condition_attention_mask"])
    assert tokens.shape == (2, 16, 32)  # a 4×4 grid
    with pytest.raises(ValueError, match="needs diffusion_pixel_values and condition_input_ids"):
        model.get_image_features(inputs["pixel_values"])


def test_cfg_combination_and_diffusion_only_backbone(diffusion_processor):
    model = diffusion_model(backbone="diffusion", combine="cfg", guidance_scale=2.0).eval()
    assert not hasattr(model, "vision_tower")
    inputs = diffusion_processor(text="<image> Is there a dog?", images=picture(1))
    features = model.get_image_features(**{k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")})
    assert features.image_embeds.shape == (1, 77, 32)
    with pytest.raises(ValueError, match="Region masks need the ConvNeXt backbone"):
        model.get_image_features(inputs["pixel_values"], torch.ones(1, 64, 64))
    with pytest.raises(ValueError, match="keep with_image_decoder"):
        tiny_config(vision_backbone="diffusion", diffusion_features_config=FEATURES, with_image_decoder=False)


def test_trains_with_the_trainer_and_answers_through_the_pipeline(diffusion_processor, tmp_path):
    model = diffusion_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = STAGES["stage1"].training_arguments(str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=2,
                                               learning_rate=1e-3, warmup_steps=0, use_cpu=True, report_to="none",
                                               save_strategy="no", logging_steps=1)
    trainer = DeemTrainer(model=model, args=args, train_dataset=make_shapes_dataset(8), stage="stage1",
                          data_collator=DeemDataCollator(diffusion_processor))
    trainer.train()
    assert len([e for e in trainer.state.log_history if "csr_loss" in e]) == 3
    changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
    assert any(k.startswith("diffusion_features.projector") for k in changed)
    assert not any(k.startswith(("unet.", "vae.", "diffusion_text_encoder.")) for k in changed)
    assert parameter_group("diffusion_features.projector.0.weight") == "image_side"

    folder = tmp_path / "deem-diffusion"
    model.save_pretrained(folder)
    diffusion_processor.save_pretrained(folder)
    image = picture(2)
    image.save(tmp_path / "picture.png")
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = run_isolated(f"""
        from PIL import Image
        from transformers import AutoProcessor, pipeline
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(processor).__name__ == "DeemDiffusionProcessor"
        pipe = pipeline("image-text-to-text", model={str(folder)!r}, trust_remote_code=True)
        messages = [{{"role": "user", "content": [{{"type": "image", "image": Image.open({str(tmp_path / "picture.png")!r})}},
                                                  {{"type": "text", "text": "What colour is it?"}}]}}]
        print("ANSWER", repr(pipe(text=messages, max_new_tokens=4, return_full_text=False)[0]["generated_text"]))
    """, cwd=work)
    assert "ANSWER" in out


def test_lora_on_the_unets_cross_attention(diffusion_processor):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(diffusion_model(), LoraConfig(
        r=4, target_modules=r"unet\..*attn2\.(to_q|to_k|to_v|to_out\.0)", init_lora_weights="gaussian"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("attn2" in n and "lora_" in n for n in trainable)
    inputs = diffusion_processor(text="<image> Is there a cat?", images=picture(3))
    features = model.get_image_features(**{k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")})
    features.image_embeds.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_stage_two_trains_the_unet_lora_and_nothing_else_of_the_unet(diffusion_processor, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(diffusion_model(), LoraConfig(
        r=4, target_modules=r"unet\..*attn2\.(to_q|to_k|to_v|to_out\.0)", init_lora_weights="gaussian"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = STAGES["stage2"].training_arguments(str(tmp_path), max_steps=2, per_device_train_batch_size=2,
                                               learning_rate=1e-2, warmup_steps=0, use_cpu=True, report_to="none",
                                               save_strategy="no", logging_steps=1)
    DeemTrainer(model=model, args=args, train_dataset=make_shapes_dataset(4), stage="stage2",
                data_collator=DeemDataCollator(diffusion_processor)).train()
    changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
    unet_changed = {k for k in changed if ".unet." in k}
    assert unet_changed and all("lora_" in k for k in unet_changed)
    assert any("diffusion_features.projector" in k for k in changed)


def test_image_generation_from_a_prompt_with_an_image(diffusion_processor):
    model = diffusion_model().eval()
    inputs = diffusion_processor(text="<image> The same shape, in blue:", images=picture(4))
    assert "decoder_pixel_values" not in inputs  # inference: no NIP/CSR targets
    images = model.generate(**inputs, generation_mode="image", num_inference_steps=2,
                            generator=torch.Generator().manual_seed(0))
    assert len(images) == 1 and images[0].size == (32, 32)
    training = diffusion_processor(text="<image> A shape.", images=picture(4), return_decoder_views=True)
    assert torch.equal(training["decoder_pixel_values"], training["diffusion_pixel_values"])
