"""`from_components` assembles DEEM from a causal LM, an open_clip ConvNeXt and a diffusers SD folder."""

import json

import open_clip
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from modeling_deem import DeemForConditionalGeneration
from modeling_deem.tiny import tiny_config_dict


def plain_tokenizer(size: int) -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(size - 3)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


SMALL_RESAMPLER = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64}


@pytest.fixture
def parts(tmp_path):
    torch.manual_seed(0)
    tiny = tiny_config_dict()
    lm = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in tiny["text_config"].items() if k != "model_type"}))
    lm.save_pretrained(tmp_path / "lm")
    plain_tokenizer(512).save_pretrained(tmp_path / "lm")  # a plain LLM tokenizer: no image tokens, no pad

    clip_config = {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
    }
    (tmp_path / "deem-test-convnext.json").write_text(json.dumps(clip_config))
    open_clip.add_model_config(tmp_path / "deem-test-convnext.json")
    clip = open_clip.create_model("deem-test-convnext")
    torch.save({"state_dict": clip.state_dict()}, tmp_path / "clip.pt")

    sd = tmp_path / "sd"
    UNet2DConditionModel.from_config(tiny["unet_config"]).save_pretrained(sd / "unet")
    AutoencoderKL.from_config(tiny["vae_config"]).save_pretrained(sd / "vae")
    DDPMScheduler.from_config(tiny["scheduler_config"]).save_pretrained(sd / "scheduler")
    CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=16)).save_pretrained(sd / "text_encoder")
    clip_tokenizer = plain_tokenizer(100)
    clip_tokenizer.model_max_length = 16
    clip_tokenizer.save_pretrained(sd / "tokenizer")
    return {"lm": lm, "clip": clip, "root": tmp_path}


def test_from_components_loads_every_part(parts):
    root = parts["root"]
    model = DeemForConditionalGeneration.from_components(
        language_model=root / "lm",
        vision_model="deem-test-convnext",
        vision_pretrained=str(root / "clip.pt"),
        diffusion_model=root / "sd",
        vision_config={"hidden_size": 32, "image_size": 64},
        resampler_config=SMALL_RESAMPLER,
        condition_resampler_config=SMALL_RESAMPLER,
        decoder_image_size=32,
    )
    vocab = parts["lm"].config.vocab_size
    assert model.config.image_start_token_id == vocab and model.config.image_token_id == vocab + 1
    assert model.config.text_config.vocab_size == vocab + 3 and model.config.pad_token_id == vocab + 2
    from processing import DeemProcessor

    processor = DeemProcessor.from_base_tokenizer(root / "lm")  # the same ids on the processor's side
    assert (processor.image_start_token_id, processor.image_token_id, processor.tokenizer.pad_token_id) == (
        model.config.image_start_token_id, model.config.image_token_id, model.config.pad_token_id)
    embed = model.get_input_embeddings().weight
    assert torch.equal(embed[:vocab], parts["lm"].get_input_embeddings().weight)
    clip_trunk = parts["clip"].visual.trunk.state_dict()
    for key, value in model.vision_tower.trunk.state_dict().items():
        assert torch.equal(value, clip_trunk[key]), key
    unet = UNet2DConditionModel.from_pretrained(root / "sd", subfolder="unet")
    for key, value in model.unet.state_dict().items():
        assert torch.equal(value, unet.state_dict()[key]), key
    assert model.config.vision_config.open_clip_model_name == "deem-test-convnext"
    assert model.config.vision_config.depths == [2, 2, 6, 2]

    ids = torch.tensor([[1, 10, 11, vocab] + [vocab + 1] * 77 + [2]])
    out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 64, 64), labels=ids,
                decoder_pixel_values=torch.rand(1, 3, 32, 32) * 2 - 1)
    assert torch.isfinite(out.loss) and out.csr_loss is not None and out.nip_loss is not None

    model.save_pretrained(root / "assembled")
    reloaded = DeemForConditionalGeneration.from_pretrained(root / "assembled")
    assert torch.equal(reloaded.vision_tower.trunk.stem[0].weight, model.vision_tower.trunk.stem[0].weight)
    # The card names every part's source, the decoder's included.
    assert reloaded.config.diffusion_model_name_or_path == str(root / "sd")
    card = (root / "assembled" / "README.md").read_text()
    assert str(root / "sd") in card and "deem-test-convnext" in card


def test_unknown_open_clip_name_is_refused(parts):
    with pytest.raises(ValueError, match="Unknown vision tower 'no-such-clip'"):
        DeemForConditionalGeneration.from_components(
            language_model=parts["root"] / "lm", vision_model="no-such-clip", diffusion_model=parts["root"] / "sd"
        )


def test_non_convnext_open_clip_is_refused(parts):
    with pytest.raises(ValueError, match="needs an open_clip model with a timm ConvNeXt tower"):
        DeemForConditionalGeneration.from_components(
            language_model=parts["root"] / "lm", vision_model="ViT-B-32", diffusion_model=parts["root"] / "sd"
        )


def test_from_components_with_the_diffusion_backbone(parts):
    root = parts["root"]
    model = DeemForConditionalGeneration.from_components(
        language_model=root / "lm", vision_model=None, diffusion_model=root / "sd", vision_backbone="diffusion",
        vision_config={"hidden_size": 32, "image_size": 64}, resampler_config=SMALL_RESAMPLER,
        condition_resampler_config=SMALL_RESAMPLER, decoder_image_size=32,
        diffusion_features_config={"up_blocks": [0, 1], "grid_size": 4},
    )
    assert not hasattr(model, "vision_tower")
    encoder = CLIPTextModel.from_pretrained(root / "sd", subfolder="text_encoder")
    for key, value in model.diffusion_text_encoder.state_dict().items():
        assert torch.equal(value, encoder.state_dict()[key]), key
    assert model.config.diffusion_features_config["uncond_token_ids"] == [1, 2]
    with pytest.raises(ValueError, match="needs an open_clip vision_model"):
        DeemForConditionalGeneration.from_components(language_model=root / "lm", vision_model=None,
                                                     diffusion_model=root / "sd")
