"""The toy world's CLIP (issue 14, stage 0): trains, saves as an open_clip model folder, loads back as DEEM loads a
real CLIP-ConvNeXt."""

import pytest
import torch
from safetensors.torch import load_file

from toyworld import clip as toy_clip


def test_toy_clip_trains_saves_and_loads_back_through_open_clip_and_deem(tmp_path):
    report = toy_clip.train(tmp_path, steps=2, batch_size=4, log_every=0, eval_images=8)
    assert 0.0 <= report["zero_shot_accuracy"]["photo"] <= 1.0 and report["chance"] == 1 / 8
    model, preprocess, tokenizer = toy_clip.load(tmp_path)
    trained = load_file(tmp_path / "open_clip_model.safetensors")
    assert all(torch.equal(value, trained[key]) for key, value in model.state_dict().items())
    ids = tokenizer(["A photo of a star."])
    assert ids.shape == (1, 32) and ids[0, 0] == 1 and 2 in ids[0].tolist()  # <s> ... </s>, pooled at </s>

    from modeling_deem.components_deem import _open_clip_trunk

    vision_config, trunk_state = _open_clip_trunk(toy_clip.model_name(tmp_path), None, {})
    assert vision_config.timm_model_name == "convnext_zepto_rms" and vision_config.dims == [32, 64, 128, 256]
    assert torch.equal(trunk_state["stem.0.weight"], trained["visual.trunk.stem.0.weight"])
    with pytest.raises(ValueError, match="holds its own weights"):
        _open_clip_trunk(toy_clip.model_name(tmp_path), "laion2b", {})


def test_toy_clip_layer_scale_and_max_pooling_are_saved_and_loaded_back(tmp_path):
    report = toy_clip.train(tmp_path, steps=1, batch_size=4, log_every=0, eval_images=8, pool="max",
                            layer_scale_init=1.0)
    assert report["pool"] == "max" and report["layer_scale_init"] == 1.0
    model, _, _ = toy_clip.load(tmp_path)  # open_clip builds the tower from the saved config: max pooling
    assert model.visual.trunk.head.global_pool.pool_type == "max"
    gammas = [v for k, v in model.state_dict().items() if k.endswith(".gamma")]
    assert len(gammas) == 10 and all((g - 1.0).abs().max() < 0.01 for g in gammas)  # one step from 1.0, not 1e-6
    with pytest.raises(ValueError, match="pool must be one of"):
        toy_clip.train(tmp_path / "bad", steps=1, pool="mean")
    with pytest.raises(ValueError, match="layer_scale_init must be > 0"):
        toy_clip.train(tmp_path / "bad", steps=1, layer_scale_init=0.0)
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_toy_clip_captions_mostly_leave_the_background_out():
    import random

    from toyworld.datasets import base_scene
    from toyworld.text import caption

    rng, texts = random.Random(0), []
    for index in range(300):
        scene = base_scene(index)
        full = caption(scene, random.Random(index))
        texts.append((toy_clip.clip_caption(full, scene, rng), full, scene))
    full_share = sum(text == full for text, full, _ in texts) / len(texts)
    assert 0.2 < full_share < 0.4  # FULL_CAPTION_PROB 0.3
    for text, full, scene in texts:
        assert all(shape in text for shape in scene.shapes)  # every variant names every shape
        if text != full:
            assert "background" not in text


def test_shape_twins_differ_from_their_photographs_in_one_shape_and_its_caption_words_only():
    import random

    from toyworld.datasets import base_scene, shown_scene
    from toyworld.scene import PLURALS, SHAPES

    rng = random.Random(0)
    scenes = [base_scene(index) for index in range(40)]
    photos = [shown_scene(index)[1] for index in range(40)]
    images, captions = toy_clip.training_pairs(scenes, photos, ["unused"] * 40, rng, shape_twins=True)
    assert len(images) == len(captions) == 80 and images[:40] == photos
    words = sorted([*SHAPES, *PLURALS.values()], key=len, reverse=True)

    def without_shapes(text: str) -> str:
        for word in words:
            text = text.replace(word, "<shape>")
        return text.replace("an <shape>", "a <shape>")

    same_wording = 0
    for scene, text, twin_text in zip(scenes, captions[:40], captions[40:]):
        assert text != twin_text and ("background" in text) == ("background" in twin_text)  # same caption kind
        assert all(shape in text for shape in scene.shapes)
        # same template: only the shape words differ, unless the new shape merged or split a group ("two squares")
        same_wording += without_shapes(text) == without_shapes(twin_text)
    assert same_wording >= 30
    twin = toy_clip.shape_twin(scenes[0], random.Random(1))
    changed = [(a, b) for a, b in zip(scenes[0].objects, twin.objects) if a != b]
    assert len(changed) == 1 and changed[0][0].shape != changed[0][1].shape
    assert changed[0][0].__class__(**{**changed[0][1].__dict__, "shape": changed[0][0].shape}) == changed[0][0]
    assert twin.background == scenes[0].background
    # plain batches keep the photographs and derive each text from the photograph's own caption
    full = [f"A {scene.objects[0].colour} thing on {scene.background.name}." for scene in scenes]
    images, captions = toy_clip.training_pairs(scenes, photos, full, random.Random(2), shape_twins=False)
    assert images == photos and 0 < sum(text in full for text in captions) < 40
