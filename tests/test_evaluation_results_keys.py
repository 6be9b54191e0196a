"""Results files are keyed by model identity and data identity: two `.../checkpoint` models never overwrite each
other, a rerun replaces only its own file, and a table shows only the runs on the same data."""

import json

import pytest
from PIL import Image

import evaluation.answering
from evaluation.__main__ import main as evaluate_main
from evaluation.result_keys import data_key, model_identity, model_key


class YesAnswerer:
    def __init__(self, model, max_new_tokens=8, batch_size=8, **settings):
        self.model = str(model)

    def run_settings(self):
        return {"prompt_template": "{question}"}

    def answer(self, questions):
        return {q.index: "yes" for q in questions}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation.answering, "ImageQuestionAnswerer", YesAnswerer)
    Image.new("RGB", (8, 8)).save(tmp_path / "0.png")
    for run in ("first", "second"):
        (tmp_path / run / "checkpoint").mkdir(parents=True)
    return tmp_path


def write_pope(path, labels):
    path.write_text("\n".join(json.dumps({"image": "0.png", "object": "cat", "label": label}) for label in labels))
    return path


def run(setup, data, *models):
    flags = [arg for model in models for arg in ("--model", str(model))]
    evaluate_main(["pope", *flags, "--data", str(data), "--results-dir", str(setup / "results")])


def result_files(setup):
    return sorted(p.relative_to(setup / "results" / "pope") for p in (setup / "results" / "pope").glob("*/*.json"))


def test_two_checkpoint_folders_get_two_files_and_two_table_rows(setup, capsys):
    data = write_pope(setup / "pope.jsonl", ["yes", "no"])
    first, second = setup / "first" / "checkpoint", setup / "second" / "checkpoint"
    run(setup, data, first, second)
    printed = capsys.readouterr().out
    assert str(first) in printed and str(second) in printed
    files = result_files(setup)
    assert len(files) == 2 and all(f.name.startswith("checkpoint-") for f in files)
    models = {json.loads((setup / "results" / "pope" / f).read_text())["summary"]["model_identity"] for f in files}
    assert models == {str(first.resolve()), str(second.resolve())}


def test_a_rerun_replaces_only_its_own_file(setup):
    data = write_pope(setup / "pope.jsonl", ["yes", "no"])
    first, second = setup / "first" / "checkpoint", setup / "second" / "checkpoint"
    run(setup, data, first, second)
    before = result_files(setup)
    assert len(before) == 2
    run(setup, data, f"{setup}/second/../first/checkpoint/")  # the same folder, spelled differently
    assert result_files(setup) == before


def test_a_table_shows_only_the_runs_on_the_same_data(setup, capsys):
    first, second = setup / "first" / "checkpoint", setup / "second" / "checkpoint"
    run(setup, write_pope(setup / "pope.jsonl", ["yes", "no"]), first)
    capsys.readouterr()
    run(setup, write_pope(setup / "other.jsonl", ["no", "no", "no"]), second)
    printed = capsys.readouterr().out
    assert str(second) in printed and str(first) not in printed
    assert len({f.parent for f in result_files(setup)}) == 2
    assert len(list((setup / "results" / "pope").glob("*/chart.png"))) == 2


def test_data_and_model_keys(tmp_path):
    data = write_pope(tmp_path / "pope.jsonl", ["yes"])
    key = data_key(data.name, [data], None)
    assert key.startswith("pope-") and key == data_key(data.name, [data], None)
    assert data_key(data.name, [data], 10) != key
    write_pope(data, ["no"])
    assert data_key(data.name, [data], None) != key
    assert model_identity("org/some-model") == "org/some-model"  # not on disk: a hub id
    assert model_key("org/some-model").startswith("some-model-")
    assert model_key("org/some-model") != model_key("other/some-model")
    (tmp_path / "a").mkdir()
    assert model_key(tmp_path / "a") == model_key(f"{tmp_path}/a/")


def test_paper_and_generic_prompt_runs_are_kept_apart_and_labelled(setup, capsys):
    data = write_pope(setup / "pope.jsonl", ["yes", "no"])
    model = setup / "first" / "checkpoint"
    for prompt in ("paper", "generic"):
        evaluate_main(["pope", "--model", str(model), "--data", str(data), "--results-dir", str(setup / "results"),
                       "--prompt", prompt])
    files = result_files(setup)
    assert len(files) == 2 and {f.stem.rsplit("-", 1)[-1] for f in files} == {"paper", "generic"}
    table = capsys.readouterr().out.split("(data key")[-1]
    assert "paper" in table and "generic" in table
