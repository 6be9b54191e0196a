"""Scoring conventions (issue 12): POPE read the official, lmms-eval and VLMEvalKit ways with POPE's as the headline;
MMVP's known swapped answers corrected unless asked not to, both Index spellings read; MMVP-VLM's image folder
spellings; and the run metadata a results file keeps so its numbers can be reproduced."""

import json

import pytest
from PIL import Image

import evaluation.answering
from evaluation.__main__ import main as evaluate_main
from evaluation.answers import lmms_eval_answer, pope_official_answer, yorn_extraction
from evaluation.benchmarks import evaluate_benchmark, load_benchmark, read_public_layout
from evaluation.report import decoding_settings, model_revision
from evaluation.vlm_matching import load_mmvp_vlm


class ScriptedAnswerer:
    """Answers by a word of the question or the image's file name (no model is loaded)."""

    script: dict[str, str] = {}

    def __init__(self, model="scripted", max_new_tokens=8, batch_size=8, **settings):
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    def run_settings(self):
        return {"prompt_template": "{question}"}

    def answer(self, questions):
        def reply(question):
            keys = [k for k in self.script if k in question.text or k == str(question.image).rsplit("/", 1)[-1]]
            return self.script[keys[0]] if keys else ""

        return {q.index: reply(q) for q in questions}


@pytest.mark.parametrize("text, official, lmms, yorn", [
    ("Yes, there is a cat.", "yes", "yes, there is a cat.", "yes"), ("No.", "no", "no.", "no"),
    ("There is not a cat", "no", "there is not a cat", "unknown"), ("NO", "yes", "no", "no"),
    ("No!", "yes", "no!", "no"), ("I see a cat. No dog.", "yes", "i see a cat. no dog.", "no"),
    ("", "yes", "", "unknown"), ("Yes, but no tail", "no", "yes, but no tail", "unknown"),
    (" Yes \n", "yes", "yes", "yes"), ("yes/no", "yes", "yes/no", "unknown"),
])
def test_the_three_pope_readings(text, official, lmms, yorn):
    assert (pope_official_answer(text), lmms_eval_answer(text), yorn_extraction(text)) == (official, lmms, yorn)


def pope_folder(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "0.png")
    rows = [("random", "cat", "yes"), ("random", "dog", "no"), ("adversarial", "bus", "yes"),
            ("adversarial", "car", "no"), ("random", "hat", "yes")]
    data = tmp_path / "pope.jsonl"
    data.write_text("\n".join(json.dumps({"image": "0.png", "object": o, "label": y, "split": s}) for s, o, y in rows))
    ScriptedAnswerer.script = {"cat": "Yes.", "dog": "No", "bus": "maybe", "car": "yes", "hat": "yes"}
    return data


def test_pope_reports_every_convention_with_the_official_one_as_headline(tmp_path):
    summary = evaluate_benchmark("pope", ScriptedAnswerer(), pope_folder(tmp_path)).summary()
    assert summary["headline"]["convention"] == "pope_official" and "official" in summary["headline"]["note"]
    official, lmms, vlmeval = (summary["conventions"][k] for k in ("pope_official", "lmms_eval", "vlmevalkit"))
    # POPE: "maybe" reads as yes; scores are the official numbers
    assert summary["scores"]["accuracy"] == pytest.approx(0.8) == official["overall"]["accuracy"]
    assert (summary["scores"]["precision"], summary["scores"]["recall"]) == (pytest.approx(0.75), 1.0)
    assert summary["scores"]["yes_ratio"] == pytest.approx(0.8)  # of predictions; the labels' share is 0.6
    assert summary["scores"]["adversarial_accuracy"] == pytest.approx(0.5) and official["overall"]["unknown"] == 0
    # lmms-eval: only exactly "yes"/"no" counts; recall leaves out yes-questions answered otherwise
    assert lmms["overall"]["accuracy"] == pytest.approx(0.4) and lmms["overall"]["precision"] == pytest.approx(0.5)
    assert lmms["overall"]["recall"] == 1.0 and lmms["overall"]["yes_ratio"] == pytest.approx(0.4)
    assert lmms["overall"]["unknown"] == 2 and lmms["random"]["accuracy"] == pytest.approx(2 / 3)
    # VLMEvalKit: "maybe" is Unknown, wrong and a missed yes
    assert vlmeval["overall"]["accuracy"] == pytest.approx(0.6) and vlmeval["overall"]["recall"] == pytest.approx(2 / 3)
    assert vlmeval["overall"]["f1"] == pytest.approx(2 / 3) and vlmeval["overall"]["yes_ratio"] == pytest.approx(0.6)
    assert (vlmeval["overall"]["unknown"], vlmeval["overall"]["unknown_ratio"]) == (1, pytest.approx(0.2))
    assert vlmeval["adversarial"]["count"] == 2 and vlmeval["adversarial"]["unknown"] == 1
    assert all("rule" in c for c in summary["conventions"].values())


def test_the_printed_report_names_the_headline_and_the_run_is_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evaluation.answering, "ImageQuestionAnswerer", ScriptedAnswerer)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "deem"}')
    (model / "model.safetensors").write_bytes(b"0" * 10)
    data = pope_folder(tmp_path)
    evaluate_main(["pope", "--model", str(model), "--data", str(data), "--results-dir", str(tmp_path / "results"),
                   "--batch-size", "3"])
    printed = capsys.readouterr().out
    assert "Headline: pope_official" in printed and "lmms_eval" in printed and "vlmevalkit" in printed
    summary = json.loads(next((tmp_path / "results" / "pope").glob("*/model-*.json")).read_text())["summary"]
    run = summary["run"]
    assert run["decoding"] == {"strategy": "greedy", "do_sample": False, "num_beams": 1, "max_new_tokens": 8,
                               "batch_size": 3}
    assert "prompt" in run and run["model_revision"]["weight_files"] == {"model.safetensors": 10}
    assert run["versions"]["deem-hf"] and run["versions"]["transformers"] and run["versions"]["torch"]
    before = run["model_revision"]["content_sha256"]
    assert model_revision(model)["content_sha256"] == before
    (model / "config.json").write_text('{"model_type": "deem", "changed": 1}')
    assert model_revision(model)["content_sha256"] != before


def test_model_revision_of_hub_snapshots_and_ids(tmp_path, monkeypatch):
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--deem"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert model_revision(repo / "snapshots" / commit)["commit"] == commit
    assert model_revision("someone/deem") == {"hub_id": "someone/deem", "commit": commit}
    assert model_revision("someone/absent")["commit"] is None


def test_decoding_settings_prefer_the_answerers_own_account():
    class Answerer:
        def generation_settings(self):
            return {"max_new_tokens": 16, "temperature": 0.0}

    assert decoding_settings(Answerer(), strategy="greedy", max_new_tokens=8) == {
        "strategy": "greedy", "max_new_tokens": 16, "temperature": 0.0}
    assert decoding_settings(object(), max_new_tokens=8) == {"max_new_tokens": 8}


def mmvp_folder(tmp_path, header="Index", answers=("(a)", "(b)", "(a)", "(b)")):
    """The four public questions with known swapped answers, as the public file has them (99: a, 100: b, ...)."""
    folder = tmp_path / "mmvp"
    (folder / "MMVP Images").mkdir(parents=True, exist_ok=True)
    questions = {99: "Does the elephant have long or short tusks?", 100: "Does the elephant have long or short tusks?",
                 279: "Is the elderly person standing or sitting in the picture?",
                 280: "Is the elderly person standing or sitting in the picture?"}
    options = {99: "(a) Long (b) Short", 100: "(a) Long (b) Short", 279: "(a) Standing (b) Sitting",
               280: "(a) Standing (b) Sitting"}
    lines = [f"{header},Question,Options,Correct Answer"]
    for (index, question), answer in zip(questions.items(), answers):
        Image.new("RGB", (8, 8), (index, 0, 0)).save(folder / "MMVP Images" / f"{index}.jpg")
        lines.append(f'{index},{question},"{options[index]}",{answer}')
    (folder / "Questions.csv").write_text("\n".join(lines) + "\n")
    ScriptedAnswerer.script = {"99.jpg": "(b)", "100.jpg": "(a)", "279.jpg": "(b)", "280.jpg": "(a)"}  # the truth
    return folder


@pytest.mark.parametrize("header", ["Index", "lndex"])
def test_mmvp_reads_both_index_spellings_and_corrects_the_swapped_answers(tmp_path, header):
    folder = mmvp_folder(tmp_path, header)
    rows = read_public_layout("mmvp", folder)
    assert [(r.fields["index"], r.fields["pair_id"], r.fields["answer"]) for r in rows] == [
        (99, 49, "(b)"), (100, 49, "(a)"), (279, 139, "(b)"), (280, 139, "(a)")]
    result = evaluate_benchmark("mmvp", ScriptedAnswerer(), folder)
    assert result.scores == {"pair_accuracy": 1.0, "question_accuracy": 1.0}
    assert [r["answer_original"] for r in result.records] == ["(a)", "(b)", "(a)", "(b)"]
    assert result.summary()["ground_truth"]["corrected"] == [99, 100, 279, 280]

    original = evaluate_benchmark("mmvp", ScriptedAnswerer(), folder, mmvp_original_answers=True)
    assert original.scores == {"pair_accuracy": 0.0, "question_accuracy": 0.0}
    assert original.data_key != result.data_key  # the two never share a table
    assert evaluate_benchmark("mmvp", ScriptedAnswerer(), folder / "Questions.csv").scores["pair_accuracy"] == 1.0


def test_mmvp_corrections_leave_right_or_different_files_alone(tmp_path):
    fixed = mmvp_folder(tmp_path, answers=("(b)", "(a)", "(b)", "(a)"))  # e.g. lmms-lab-eval/MMVP's fixed copy
    loaded = load_benchmark("mmvp", fixed)
    assert loaded.details["ground_truth"]["corrected"] == [] and "no known wrong answer" in loaded.notes[0]
    text = (fixed / "Questions.csv").read_text().replace("tusks", "ears").replace("sitting", "lying")
    (fixed / "Questions.csv").write_text(text)
    assert [r.fields["answer"] for r in read_public_layout("mmvp", fixed)] == ["(b)", "(a)", "(b)", "(a)"]


def test_the_mmvp_report_says_which_answers_were_used(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evaluation.answering, "ImageQuestionAnswerer", ScriptedAnswerer)
    (tmp_path / "model").mkdir()
    folder = mmvp_folder(tmp_path)
    for extra in ([], ["--mmvp-original-answers"]):
        evaluate_main(["mmvp", "--model", str(tmp_path / "model"), "--data", str(folder),
                       "--results-dir", str(tmp_path / "results"), *extra])
    printed = capsys.readouterr().out
    assert "MMVP ground truth: corrected at Index 99, 100, 279, 280" in printed
    assert "MMVP ground truth: the file's own answers (--mmvp-original-answers)" in printed
    saved = [json.loads(p.read_text())["summary"] for p in (tmp_path / "results" / "mmvp").glob("*/model-*.json")]
    assert sorted(s["scores"]["pair_accuracy"] for s in saved) == [0.0, 1.0]


@pytest.mark.parametrize("images", ["MLLM_VLM Images", "MMVP_VLM Images", "MLLM_VLM_Images"])
def test_mmvp_vlm_reads_the_public_image_folder_spellings(tmp_path, images):
    (tmp_path / "Questions.csv").write_text("\ufeffQuestion ID,Type,Statement\n1,Color,a red ball\n2,Color,a blue ball\n")
    (tmp_path / images / "Color").mkdir(parents=True)
    for qid in (1, 2):
        Image.new("RGB", (8, 8)).save(tmp_path / images / "Color" / f"{qid}.jpg")
    [item] = load_mmvp_vlm(tmp_path)
    assert item["images"] == [tmp_path / images / "Color" / "1.jpg", tmp_path / images / "Color" / "2.jpg"]
