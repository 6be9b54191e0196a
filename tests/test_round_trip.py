"""save_pretrained → from_pretrained is bit-exact, safetensors only, and works as remote code."""

import json

import pytest
import torch
from conftest import make_batch
from isolated import run_isolated
from safetensors.torch import load_file, save_file

from modeling_deem import DeemForConditionalGeneration


def assert_same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def test_round_trip_is_bit_exact(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    loaded = DeemForConditionalGeneration.from_pretrained(tmp_path)
    assert_same_tensors(tiny_model, loaded)
    # The new-token columns are a non-persistent buffer: not saved, set again when loading (not left empty).
    assert "new_token_index" not in loaded.state_dict()
    assert torch.equal(loaded.new_token_index, torch.tensor(loaded.config.new_token_ids))
    assert all(not p.requires_grad for p in loaded.unet.parameters())
    assert loaded.noise_scheduler.config.num_train_timesteps == 1000


def test_round_trip_in_bfloat16(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    loaded = DeemForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert_same_tensors(tiny_model.to(torch.bfloat16), loaded)
    assert loaded.new_token_index.dtype == torch.long
    assert torch.equal(loaded.new_token_index, torch.tensor(loaded.config.new_token_ids))
    assert_same_tensors(loaded, DeemForConditionalGeneration.from_pretrained(tmp_path, torch_dtype=torch.bfloat16))
    bf16_dir = tmp_path / "bf16"
    loaded.save_pretrained(bf16_dir)
    assert_same_tensors(loaded, DeemForConditionalGeneration.from_pretrained(bf16_dir, dtype=torch.bfloat16))
    out = loaded(**{k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in make_batch(
        [[1, 10, 11, 4] + [5] * 77 + [2]]).items()})
    assert torch.isfinite(out.loss)


def test_missing_weights_are_an_error_unless_strict_is_off(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["negative_condition.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing: negative_condition\.weight"):
        DeemForConditionalGeneration.from_pretrained(tmp_path)
    _, info = DeemForConditionalGeneration.from_pretrained(tmp_path, strict=False, output_loading_info=True)
    assert "negative_condition.weight" in info["missing_keys"]


def test_unexpected_weights_are_refused_but_a_dropped_decoder_is_expected(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    without_decoder = DeemForConditionalGeneration.from_pretrained(tmp_path, with_image_decoder=False)
    assert not hasattr(without_decoder, "unet")
    weights = load_file(tmp_path / "model.safetensors")
    weights["visual_resampler.extra"] = torch.zeros(2)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unexpected: visual_resampler\.extra"):
        DeemForConditionalGeneration.from_pretrained(tmp_path)


def test_saved_folder_carries_code_and_auto_map(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_deem.DeemConfig",
        "AutoModel": "modeling_deem.DeemForConditionalGeneration",
        "AutoModelForImageTextToText": "modeling_deem.DeemForConditionalGeneration",
    }
    for name in ("configuration_deem.py", "modeling_deem.py", "vision_deem.py", "resampler_deem.py",
                 "diffusion_deem.py", "positional_embeddings.py", "image_generation_deem.py",
                 "diffusion_features_deem.py"):
        assert (tmp_path / name).exists(), name


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_remote_code_loads_outside_the_repository(tiny_model, tmp_path, dtype):
    model_dir = tmp_path / "deem-tiny"
    tiny_model.save_pretrained(model_dir)
    expected = {k: v.to(getattr(torch, dtype)) for k, v in tiny_model.state_dict().items()}
    torch.save(expected, tmp_path / "expected.pt")
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = run_isolated(f"""
        import torch
        from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText
        folder = {str(model_dir)!r}
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        assert type(config).__name__ == "DeemConfig", type(config)
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        for auto in (AutoModel, AutoModelForImageTextToText):
            model = auto.from_pretrained(folder, trust_remote_code=True, dtype=torch.{dtype})
            assert type(model).__name__ == "DeemForConditionalGeneration"
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            state = model.state_dict()
            assert state.keys() == expected.keys()
            assert all(torch.equal(state[k], expected[k]) and state[k].dtype == expected[k].dtype for k in state)
        ids = torch.tensor([[1, 10, 11, 4] + [5] * 77 + [2]])
        out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 64, 64).to(torch.{dtype}), labels=ids)
        print("LOSS", float(out.loss))
    """, cwd=work)
    assert "LOSS" in out
