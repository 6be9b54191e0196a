"""The diffusion image–text matcher against an independent step-by-step reference, and the matching metrics."""

import numpy as np
import pytest
import torch
from conftest import TINY
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from evaluation.diffusion_matching import DiffusionImageTextScorer, cross_attention_layers
from evaluation.vlm_matching import mmvp_vlm_pair_correct, winoground_scores
from modeling_deem.tiny import tiny_config_dict
from processing import DeemProcessor

TEXTS = ["a red square", "a blue circle", "a green triangle"]


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """Tiny Stable Diffusion parts saved in the diffusers layout (unet, vae, scheduler, text_encoder, tokenizer)."""
    folder = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    tiny = tiny_config_dict()
    UNet2DConditionModel.from_config(tiny["unet_config"]).save_pretrained(folder / "unet")
    AutoencoderKL.from_config(tiny["vae_config"]).save_pretrained(folder / "vae")
    DDPMScheduler.from_config(tiny["scheduler_config"]).save_pretrained(folder / "scheduler")
    CLIPTextModel(CLIPTextConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=16, projection_dim=16,
                                 bos_token_id=1, eos_token_id=2, pad_token_id=3)).save_pretrained(folder / "text_encoder")
    tokenizer = DeemProcessor.from_pretrained(TINY).tokenizer
    tokenizer.model_max_length = 16
    tokenizer.save_pretrained(folder / "tokenizer")
    return folder


@pytest.fixture(scope="module")
def scorer(sd_folder):
    return DiffusionImageTextScorer.from_pretrained(sd_folder, timesteps=(189, 589, 989), seed=3, batch_size=2)


def picture(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8))


def test_scores_are_deterministic_and_per_candidate(scorer):
    first, again = scorer.score(picture(), TEXTS), scorer.score(picture(), TEXTS)
    assert torch.equal(first.attention, again.attention) and torch.equal(first.error, again.error)
    assert first.attention.shape == (3,) and torch.isfinite(first.attention).all()
    same = scorer.score(picture(), [TEXTS[0], TEXTS[0]])
    assert same.attention[0] == same.attention[1] and same.error[0] == same.error[1]
    reordered = scorer.score(picture(), [TEXTS[2], TEXTS[0], TEXTS[1]])
    torch.testing.assert_close(reordered.attention, first.attention[[2, 0, 1]])
    torch.testing.assert_close(reordered.error, first.error[[2, 0, 1]])
    # batch_size 2 splits the three candidates, yet no score depends on its batch-mates
    single = scorer.score(picture(), [TEXTS[1]])
    torch.testing.assert_close(single.attention, first.attention[[1]])


def test_attention_score_equals_a_reference_computed_by_hand(scorer):
    """Forward hooks on a plain UNet forward capture q and k; LogSumExp is computed here independently."""
    unet = scorer.unet
    layers = [name.removesuffix(".processor") for name in cross_attention_layers(unet)]
    modules = {name: unet.get_submodule(name) for name in layers}
    latent = scorer.encode_image(picture())
    embeddings, mask = scorer.encode_texts(TEXTS)
    expected = torch.zeros(len(TEXTS), dtype=torch.float64)
    for step, t in enumerate(scorer.timesteps):
        captured = {}
        hooks = [m.to_q.register_forward_hook(lambda _m, _i, o, n=n, c=captured: c.__setitem__((n, "q"), o))
                 for n, m in modules.items()]
        hooks += [m.to_k.register_forward_hook(lambda _m, _i, o, n=n, c=captured: c.__setitem__((n, "k"), o))
                  for n, m in modules.items()]
        noise = scorer.noise(latent, step)
        timestep = torch.tensor([t])
        noisy = scorer.scheduler.add_noise(latent, noise, timestep)
        with torch.no_grad():
            unet(noisy.expand(3, -1, -1, -1), timestep.expand(3), encoder_hidden_states=embeddings)
        for hook in hooks:
            hook.remove()
        per_layer = []
        for name, module in modules.items():
            q, k = captured[(name, "q")], captured[(name, "k")]
            heads = module.heads
            q = q.reshape(3, q.shape[1], heads, -1).permute(0, 2, 1, 3).double()
            k = k.reshape(3, k.shape[1], heads, -1).permute(0, 2, 1, 3).double()
            logits = (q @ k.transpose(-1, -2)) / np.sqrt(q.shape[-1])
            values = []
            for row in range(3):
                keep = mask[row].bool()
                values.append(torch.logsumexp(logits[row][..., keep], dim=-1).mean())
            per_layer.append(torch.stack(values))
        expected += torch.stack(per_layer).mean(0)
    expected /= len(scorer.timesteps)
    torch.testing.assert_close(scorer.score(picture(), TEXTS).attention, expected, atol=1e-4, rtol=1e-4)


def test_processors_are_restored_even_after_an_error(scorer):
    before = {name: type(p) for name, p in scorer.unet.attn_processors.items()}
    scorer.score(picture(), TEXTS[:1])
    assert {name: type(p) for name, p in scorer.unet.attn_processors.items()} == before
    original = scorer.unet.forward

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    scorer.unet.forward = broken
    try:
        with pytest.raises(RuntimeError, match="boom"):
            scorer.score(picture(), TEXTS[:1])
    finally:
        scorer.unet.forward = original
    assert {name: type(p) for name, p in scorer.unet.attn_processors.items()} == before


def test_layer_subsets_and_error_normalisation(sd_folder, scorer):
    names = cross_attention_layers(scorer.unet, "last")
    assert [n.split(".")[0] for n in names] == ["down_blocks", "mid_block", "up_blocks"]
    with pytest.raises(ValueError, match="'all' or 'last'"):
        cross_attention_layers(scorer.unet, "first")
    raw = DiffusionImageTextScorer.from_pretrained(sd_folder, timesteps=(189,), normalize_error=False, seed=3)
    normalised = DiffusionImageTextScorer.from_pretrained(sd_folder, timesteps=(189,), normalize_error=True, seed=3)
    a, b = raw.score(picture(), TEXTS).error, normalised.score(picture(), TEXTS).error
    ratio = a / b  # the same unconditional error divides every candidate
    torch.testing.assert_close(ratio, ratio[:1].expand(3))


def test_matching_metrics_by_hand():
    assert mmvp_vlm_pair_correct(np.array([[0.9, 0.2], [0.1, 0.8]]))
    assert not mmvp_vlm_pair_correct(np.array([[0.9, 0.96], [0.1, 0.95]]))  # statement 1 picks image 0
    assert winoground_scores(np.array([[0.9, 0.2], [0.1, 0.8]])) == {"text": True, "image": True, "group": True}
    # image 1 prefers caption 0 (text fails); each caption still prefers its own image (image holds)
    assert winoground_scores(np.array([[0.9, 0.2], [0.5, 0.3]])) == {"text": False, "image": True, "group": False}
    # each image prefers its caption (text holds); caption 0 prefers image 1 (image fails)
    assert winoground_scores(np.array([[0.5, 0.2], [0.9, 0.95]])) == {"text": True, "image": False, "group": False}


def test_matching_command_on_an_mmvp_vlm_folder(sd_folder, tmp_path, capsys):
    import json

    from evaluation.__main__ import main as evaluate_main

    data = tmp_path / "MMVP_VLM"
    rows = ["Question ID,Type,Statement"]
    for pattern, first in (("Orientation", 1), ("Color", 3)):
        (data / "MMVP_VLM Images" / pattern).mkdir(parents=True)
        for qid in (first, first + 1):
            picture(qid).save(data / "MMVP_VLM Images" / pattern / f"{qid}.jpg")
            rows.append(f"{qid},{pattern},statement number {qid}")
    (data / "Questions.csv").write_text("\n".join(rows) + "\n")
    results = tmp_path / "results"
    evaluate_main(["mmvp-vlm", "--sd-model", str(sd_folder), "--data", str(data), "--timesteps", "189", "589",
                   "--results-dir", str(results)])
    printed = capsys.readouterr().out
    assert "Orientation" in printed and "Color" in printed and "mean" in printed
    saved = json.loads((results / "mmvp-vlm" / "diffusion-attention.json").read_text())
    scores = saved["summary"]["scores"]
    assert set(scores) == {"Orientation", "Color", "mean"}
    assert scores["mean"] == pytest.approx((scores["Orientation"] + scores["Color"]) / 2)
    assert all(len(r["matrix"]) == 2 for r in saved["records"])
    assert (results / "mmvp-vlm" / "chart.png").exists()


def test_winoground_rows_with_a_clip_baseline(sd_folder, tmp_path):
    import json

    import open_clip

    from evaluation.diffusion_matching import DiffusionImageTextScorer
    from evaluation.vlm_matching import ClipScorer, diffusion_scorer, evaluate_winoground

    for k in range(4):
        picture(k).save(tmp_path / f"{k}.png")
    rows = [{"image_0": "0.png", "image_1": "1.png", "caption_0": "a red square", "caption_1": "a square red"},
            {"image_0": "2.png", "image_1": "3.png", "caption_0": "dog bites man", "caption_1": "man bites dog"}]
    scorer = diffusion_scorer(DiffusionImageTextScorer.from_pretrained(sd_folder, timesteps=(389,)))
    outcome = evaluate_winoground(rows, scorer, tmp_path)
    assert set(outcome["scores"]) == {"text", "image", "group"}
    for record in outcome["records"]:
        m = np.array(record["matrix"])
        assert record["group"] == (record["text"] and record["image"])
        assert record["text"] == bool(m[0, 0] > m[0, 1] and m[1, 1] > m[1, 0])
    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                              "head_width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "tiny-clip-w.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "tiny-clip-w.json")
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip-w")
    clip = evaluate_winoground(rows, ClipScorer("tiny-clip-w", model=model, preprocess=preprocess), tmp_path)
    assert set(clip["scores"]) == {"text", "image", "group"}
