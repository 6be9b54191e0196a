"""`python -m evaluation` end to end on a tiny DEEM and a tiny LLaVA, malformed rows, feature reuse, 2 processes."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY
from PIL import Image

from evaluation.__main__ import main as evaluate_main
from evaluation.answering import ImageQuestionAnswerer
from modeling_deem import DeemConfig, DeemForConditionalGeneration
from processing import DeemProcessor

CHAT = ("{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% for p in m['content'] %}{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}"
        "{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


def saved(results, benchmark, name):
    """The one results file of model folder `name` (results/<benchmark>/<data key>/<name>-<hash>.json)."""
    files = list((results / benchmark).glob(f"*/{name}-*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    processor = DeemProcessor.from_pretrained(TINY)
    DeemForConditionalGeneration(DeemConfig.from_pretrained(TINY)).save_pretrained(root / "deem-tiny")
    processor.save_pretrained(root / "deem-tiny")

    tokenizer = DeemProcessor.from_pretrained(TINY).tokenizer
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 4, "image_size": 32, "patch_size": 8,
                       "projection_dim": 16},
        text_config={"model_type": "llama", "vocab_size": 520, "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "bos_token_id": 1,
                     "eos_token_id": 2, "pad_token_id": 3},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=16, vision_feature_layer=-1,
    )
    LlavaForConditionalGeneration(config).save_pretrained(root / "llava-tiny")
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                   tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="full",
                   chat_template=CHAT).save_pretrained(root / "llava-tiny")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for index, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        Image.new("RGB", (40, 30), colour).save(root / f"{index}.png")
    write = lambda name, rows: (root / name).write_text("\n".join(json.dumps(r) for r in rows))  # noqa: E731
    write("pope.jsonl", [
        {"image": "0.png", "object": "cat", "label": "yes", "split": "random"},
        {"image": "0.png", "object": "dog", "label": "no", "split": "random"},
        {"image": "1.png", "text": "Is there a car in the image?", "label": "no", "split": "adversarial"},
        {"image": "missing.png", "object": "cat", "label": "yes", "split": "random"},
        {"image": "2.png", "object": "", "label": "yes", "split": "random"},
    ])
    write("robustvqa.jsonl", [
        {"image": "0.png", "question": "Is tench the main object in this image? Please answer yes or no.",
         "answer": "yes", "source": "A"},
        {"image": "0.png", "question": "Is goldfish the main object in this image? Please answer yes or no.",
         "answer": "no", "source": "A"},
        {"image": "1.png", "question": "Is hen the main object in this image? Please answer yes or no.",
         "answer": "", "source": "R"},
    ])
    write("mmvp.jsonl", [{"image": "0.png", "question": "Is it red?", "options": "(a) yes (b) no", "answer": "(a)",
                          "pair_id": 1},
                         {"image": "1.png", "question": "Is it red?", "options": "(a) yes (b) no", "answer": "(b)",
                          "pair_id": 1}])
    write("vqav2.jsonl", [{"image": "2.png", "question": "What colour?", "answers": ["blue"] * 10}])
    write("caption.jsonl", [{"image": "0.png", "references": ["a red picture", "red"]},
                            {"image": "1.png", "references": ["a green picture"]}])
    return root


def test_pope_for_deem_and_llava_side_by_side(models, data, tmp_path, capsys):
    results = tmp_path / "results"
    evaluate_main(["pope", "--model", str(models / "deem-tiny"), "--model", str(models / "llava-tiny"),
                   "--data", str(data / "pope.jsonl"), "--results-dir", str(results), "--batch-size", "2"])
    printed = capsys.readouterr().out
    assert "deem-tiny" in printed and "llava-tiny" in printed and "yes_ratio" in printed
    for name in ("deem-tiny", "llava-tiny"):
        run = saved(results, "pope", name)
        summary = run["summary"]
        assert summary["evaluated"] == 3
        assert summary["skipped"] == {"image file missing": 1, "empty text|object": 1}
        assert {"accuracy", "precision", "recall", "f1", "yes_ratio", "random_accuracy",
                "adversarial_accuracy"} <= set(summary["scores"])
        assert len(run["records"]) == 3 and all("prediction" in r and "parsed" in r for r in run["records"])
        parsed = [r["parsed"] for r in run["records"]]
        labels = [r["label"] for r in run["records"]]
        assert summary["scores"]["accuracy"] == pytest.approx(sum(p == y for p, y in zip(parsed, labels)) / 3)
    assert Image.open(next((results / "pope").glob("*/chart.png"))).size[0] > 200


@pytest.mark.parametrize("benchmark, headline", [("robustvqa", "accuracy_A"), ("mmvp", "pair_accuracy"),
                                                 ("vqav2", "accuracy"), ("caption", "cider")])
def test_every_benchmark_runs_on_deem(models, data, tmp_path, benchmark, headline):
    results = tmp_path / "results"
    evaluate_main([benchmark, "--model", str(models / "deem-tiny"), "--data", str(data / f"{benchmark}.jsonl"),
                   "--results-dir", str(results), "--limit", "5", "--max-new-tokens", "4"])
    summary = saved(results, benchmark, "deem-tiny")["summary"]
    assert headline in summary["scores"]
    if benchmark == "robustvqa":
        assert summary["skipped"] == {"empty answer": 1} and summary["evaluated"] == 2
        evaluate_main([benchmark, "--model", str(models / "llava-tiny"), "--data", str(data / "robustvqa.jsonl"),
                       "--results-dir", str(results)])
        assert saved(results, benchmark, "llava-tiny")["summary"]["evaluated"] == 2


def test_a_trainer_checkpoint_evaluates_as_it_is(data, tmp_path):
    from trainers.train_deem import main as train_main

    train_main(["--output_dir", str(tmp_path / "run"), "--stage", "stage1", "--config_name", str(TINY),
                "--dataset", "shapes", "--max_train_samples", "4", "--per_device_train_batch_size", "2",
                "--max_steps", "1", "--save_steps", "1", "--use_cpu", "--report_to", "none",
                "--dataloader_num_workers", "0"])
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert (checkpoint / "processor_config.json").exists()
    evaluate_main(["pope", "--model", str(checkpoint), "--data", str(data / "pope.jsonl"),
                   "--results-dir", str(tmp_path / "results"), "--max-new-tokens", "2"])
    assert saved(tmp_path / "results", "pope", "checkpoint-1")["summary"]["evaluated"] == 3


def test_unknown_benchmark_and_missing_data(models, tmp_path):
    with pytest.raises(SystemExit):
        evaluate_main(["nope", "--model", str(models / "deem-tiny"), "--data", "x.jsonl"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_main(["pope", "--model", str(models / "deem-tiny"), "--data", str(tmp_path / "none.jsonl")])


def test_deem_reuses_image_features_without_changing_answers(models):
    answerer = ImageQuestionAnswerer(models / "deem-tiny", max_new_tokens=5)
    image = Image.new("RGB", (40, 30), (10, 120, 200))
    questions = ["Is there a cat in the image?", "Is it blue?", "What is it?"]
    encoded = []
    hook = answerer.model.vision_tower.register_forward_hook(lambda m, i, o: encoded.append(i[0].shape[0]))
    reused = answerer.answer_image(image, questions)
    answerer.reuses_image_features = False
    plain = answerer.answer_image(image, questions)
    hook.remove()
    assert reused == plain
    assert encoded == [1, 3]  # once with reuse; once per question without


def test_two_processes_give_the_same_predictions(models, data, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    command = ["-m", "evaluation", "pope", "--model", str(models / "deem-tiny"), "--data", str(data / "pope.jsonl")]
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    for results, processes, prefix in (
            (tmp_path / "one", 1, [sys.executable]),
            (tmp_path / "two", 2, [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
                                   str(port)])):
        run = subprocess.run([*prefix, *command, "--results-dir", str(results)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        assert f"({processes} process(es))" in run.stdout
    one, two = saved(tmp_path / "one", "pope", "deem-tiny"), saved(tmp_path / "two", "pope", "deem-tiny")
    assert [r["prediction"] for r in one["records"]] == [r["prediction"] for r in two["records"]]
    assert one["summary"]["scores"] == two["summary"]["scores"]


def test_public_layouts_of_pope_and_mmvp(models, tmp_path):
    pope = tmp_path / "pope"
    pope.mkdir()
    Image.new("RGB", (40, 30), (200, 0, 0)).save(pope / "COCO_val2014_1.jpg")
    for split in ("random", "adversarial"):
        (pope / f"coco_pope_{split}.json").write_text("\n".join(json.dumps(
            {"question_id": i, "image": "COCO_val2014_1.jpg", "text": "Is there a cat in the image?",
             "label": label}) for i, label in enumerate(["yes", "no"])))
    results = tmp_path / "results"
    evaluate_main(["pope", "--model", str(models / "deem-tiny"), "--data", str(pope), "--results-dir", str(results)])
    summary = saved(results, "pope", "deem-tiny")["summary"]
    assert summary["evaluated"] == 4 and {"random_f1", "adversarial_f1"} <= set(summary["scores"])

    mmvp = tmp_path / "mmvp"
    (mmvp / "MMVP Images").mkdir(parents=True)
    lines = ["Index,Question,Options,Correct Answer"]
    for index in (1, 2):
        Image.new("RGB", (40, 30), (0, 90 * index, 0)).save(mmvp / "MMVP Images" / f"{index}.jpg")
        lines.append(f'{index},Is the dog facing left?,"(a) Yes (b) No",{"(a)" if index == 1 else "(b)"}')
    (mmvp / "Questions.csv").write_text("\n".join(lines) + "\n")
    evaluate_main(["mmvp", "--model", str(models / "deem-tiny"), "--data", str(mmvp), "--results-dir", str(results)])
    run = saved(results, "mmvp", "deem-tiny")
    assert run["summary"]["evaluated"] == 2 and [r["pair_id"] for r in run["records"]] == [0, 0]
