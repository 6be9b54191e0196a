"""`python -m evaluation t2i`: FID against the Gaussian formula, the whole CLI on the tiny DEEM with tiny
extractors, seeding, Inception weights read from a local file, and clear errors for bad input."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

from evaluation import image_metrics, t2i
from evaluation.__main__ import main as evaluate_main
from modeling_deem import DeemConfig, DeemForConditionalGeneration
from processing import DeemProcessor


class Identity(torch.nn.Module):
    """Features are the inputs: lets the test feed FID known Gaussian samples through its real update path."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class TinyFeatures(torch.nn.Module):
    """A random 4-feature extractor on uint8 images, standing in for Inception."""

    num_features = 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images.float() / 255).mean((2, 3))


def sqrt_trace(a: np.ndarray, b: np.ndarray) -> float:
    """Tr((A B)^½) for symmetric PSD A, B as Tr((A^½ B A^½)^½), with symmetric eigendecompositions only."""
    values, vectors = np.linalg.eigh(a)
    root = vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(root @ b @ root), 0, None)).sum())


def frechet(mu1, s1, mu2, s2) -> float:
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * sqrt_trace(s1, s2))


def test_fid_is_the_frechet_distance_of_the_feature_gaussians():
    rng = np.random.default_rng(0)
    a1, a2 = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    mu1, mu2, s1, s2 = np.array([0.0, 1.0, -1.0]), np.array([1.5, 0.5, 0.0]), a1 @ a1.T + 0.1, a2 @ a2.T + 0.1
    x1 = rng.multivariate_normal(mu1, s1, size=20000)
    x2 = rng.multivariate_normal(mu2, s2, size=20000)
    metric = image_metrics.fid_metric(feature=Identity(3))
    metric.update(torch.from_numpy(x1), real=True)
    metric.update(torch.from_numpy(x2), real=False)
    fid = image_metrics.fid_value(metric)
    sample = frechet(x1.mean(0), np.cov(x1, rowvar=False), x2.mean(0), np.cov(x2, rowvar=False))
    assert fid == pytest.approx(sample, rel=1e-6)
    assert fid == pytest.approx(frechet(mu1, s1, mu2, s2), rel=0.05)  # the population value, up to sampling
    metric.reset()  # references are kept: the same distribution again gives about 0
    metric.update(torch.from_numpy(rng.multivariate_normal(mu1, s1, size=20000)), real=False)
    assert image_metrics.fid_value(metric) < 0.01


def test_fid_needs_two_images_on_each_side():
    metric = image_metrics.fid_metric(feature=TinyFeatures())
    image_metrics.add_images(metric, [Image.new("RGB", (20, 30), "red"), Image.new("RGB", (9, 9))], 16, real=True)
    image_metrics.add_images(metric, [Image.new("RGB", (16, 16), "blue")], 16, real=False)
    with pytest.raises(ValueError, match="at least 2 reference and 2 generated images; got 2 and 1"):
        image_metrics.fid_value(metric)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved tiny DEEM, a tiny random CLIP folder, reference images and two captions."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    root = tmp_path_factory.mktemp("t2i")
    torch.manual_seed(0)
    model = DeemForConditionalGeneration(DeemConfig.from_pretrained(TINY))
    model.processor = DeemProcessor.from_pretrained(TINY)
    model.save_pretrained(root / "deem-tiny")
    tokenizer = DeemProcessor.from_pretrained(TINY).tokenizer
    small = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(text_config={**small, "vocab_size": len(tokenizer), "max_position_embeddings": 77,
                                     "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3},
                        vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=8)
    CLIPModel(config).save_pretrained(root / "clip-tiny")
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(root / "clip-tiny")
    (root / "refs" / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index, (size, suffix) in enumerate([((40, 30), "png"), ((32, 32), "jpg"), ((24, 50), "png")]):
        folder = root / "refs" / ("sub" if index == 2 else "")
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(folder / f"r{index}.{suffix}")
    (root / "refs" / "notes.txt").write_text("not an image")
    (root / "captions.jsonl").write_text('{"caption": "A red square."}\n{"caption": "A blue circle on grass."}\n')
    return root


def arguments(root, *extra):
    return ["--model", str(root / "deem-tiny"), "--data", str(root / "captions.jsonl"),
            "--reference-images", str(root / "refs"), "--clip-model", str(root / "clip-tiny"),
            "--samples-per-caption", "2", "--num-inference-steps", "1", "--batch-size", "3",
            "--results-dir", str(root / "results"), *extra]


def test_cli_generates_reranks_and_scores(setup, capsys):
    assert t2i.main(arguments(setup, "--save-images", str(setup / "images")), feature=TinyFeatures()) == 0
    files = list((setup / "results" / "t2i").glob("*/deem-tiny-*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    summary, records = saved["summary"], saved["records"]
    assert summary["benchmark"] == "t2i" and summary["evaluated"] == 2
    assert summary["settings"]["samples_per_caption"] == 2 and summary["settings"]["image_size"] == 32
    scores = summary["scores"]
    assert np.isfinite(scores["fid"]) and scores["fid"] >= -1e-6
    assert 0 <= scores["clip_score"] <= 100 and 0 <= scores["clip_score_candidates"] <= 100
    assert [r["caption"] for r in records] == ["A red square.", "A blue circle on grass."]
    assert [r["seeds"] for r in records] == [[0, 1], [2, 3]]
    for record in records:
        assert record["chosen"] == int(np.argmax(record["clip_similarities"]))
        assert Image.open(record["image"]).size == (32, 32)
    assert "deem-tiny" in capsys.readouterr().out  # the table


def test_candidates_do_not_depend_on_the_batch_size(setup):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(setup / "deem-tiny", trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(setup / "deem-tiny", trust_remote_code=True)
    captions = ["A red square.", "A blue circle on grass."]

    def run(batch_size):
        found = dict(t2i.generate_candidates(model, processor, captions, 2, 1, 3.5, 7, batch_size))
        return [np.asarray(image, dtype=np.int16) for index in (0, 1) for image in found[index]]

    three, four = run(3), run(4)  # the last candidate alone, or left-padded next to the others
    assert all(np.abs(a - b).max() <= 1 for a, b in zip(three, four))  # padding may move a pixel by 1
    assert np.abs(four[0] - four[1]).max() > 0  # candidates of a caption differ


def test_bad_input_is_refused_clearly(setup, tmp_path):
    with pytest.raises(FileNotFoundError, match="Reference image folder .* does not exist"):
        evaluate_main(["t2i", *arguments(setup, "--reference-images", str(tmp_path / "missing"))])
    (tmp_path / "one").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "a.png")
    with pytest.raises(ValueError, match="has 1 image\\(s\\); FID needs at least 2"):
        evaluate_main(["t2i", *arguments(setup, "--reference-images", str(tmp_path / "one"))])
    (tmp_path / "empty.jsonl").write_text('{"caption": "fine"}\n{"caption": "  "}\n')
    with pytest.raises(ValueError, match="empty.jsonl, line 2: needs a non-empty 'caption'"):
        evaluate_main(["t2i", *arguments(setup, "--data", str(tmp_path / "empty.jsonl"))])
    (tmp_path / "single.jsonl").write_text('{"caption": "alone"}\n')
    with pytest.raises(ValueError, match="1 caption\\(s\\); FID needs at least 2"):
        evaluate_main(["t2i", *arguments(setup, "--data", str(tmp_path / "single.jsonl"))])
    with pytest.raises(FileNotFoundError, match="Inception weights .* do not exist"):
        evaluate_main(["t2i", *arguments(setup, "--inception-weights", str(tmp_path / "none.pth"))])
    with pytest.raises(ValueError, match="--samples-per-caption must be at least 1"):
        evaluate_main(["t2i", *arguments(setup, "--samples-per-caption", "0")])


def test_inception_weights_load_from_a_local_file(tmp_path, monkeypatch):
    """torch-fidelity's own Inception reads the file given (offline): its parameters are the file's."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    state = {}
    with monkeypatch.context() as patch:  # build a random state dict of the right shapes without any download
        patch.setattr(torch, "load", lambda *args, **kwargs: {})
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict",
                      lambda self, *args, **kwargs: state.update(self.state_dict()))
        FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    state["fc.bias"] = torch.arange(1008, dtype=torch.float32)
    torch.save(state, tmp_path / image_metrics.INCEPTION_WEIGHTS_FILE)
    metric = image_metrics.fid_metric(tmp_path / image_metrics.INCEPTION_WEIGHTS_FILE)
    assert torch.equal(metric.inception.fc.bias, state["fc.bias"])
    assert torch.equal(metric.inception.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])
    assert metric.inception.use_antialias is False  # TensorFlow-style resize, as the original FID
