"""The toy world's CLIP (issue 14, stage 0): trains, saves in open_clip's format, loads back as DEEM loads a
real CLIP-ConvNeXt."""

import torch

from toyworld import clip as toy_clip


def test_toy_clip_trains_saves_and_loads_back_through_open_clip_and_deem(tmp_path):
    report = toy_clip.train(tmp_path, steps=2, batch_size=4, log_every=0, eval_images=8)
    assert 0.0 <= report["zero_shot_accuracy"]["photo"] <= 1.0 and report["chance"] == 1 / 8
    model, preprocess, tokenizer = toy_clip.load(tmp_path)
    trained = torch.load(tmp_path / "open_clip_toy.pt", weights_only=True)
    assert all(torch.equal(value, trained[key]) for key, value in model.state_dict().items())

    from modeling_deem.components_deem import _open_clip_trunk

    vision_config, trunk_state = _open_clip_trunk(toy_clip.TOY_CLIP, str(tmp_path / "open_clip_toy.pt"), {})
    assert vision_config.timm_model_name == "convnext_atto"
    assert torch.equal(trunk_state["stem.0.weight"], trained["visual.trunk.stem.0.weight"])
