"""Prompts: DEEM gets the paper's Figure 8 templates by default, other models the same user turn in their own
chat template, `--prompt generic` the bare question; the results file records which, and the decoding."""

import pytest
from conftest import TINY
from test_evaluation_runs import data, models, saved  # noqa: F401  (tiny DEEM + LLaVA folders, benchmark files)

from evaluation.__main__ import main as evaluate_main
from evaluation.answering import ImageQuestionAnswerer
from evaluation.benchmarks import CAPTION_QUESTION, POPE_QUESTION, VQA_QUESTION
from processing import DeemProcessor
from processing.prompts_deem import question_prompt

LEAD = "Based on the image, please answer the question."
ROBUST = "Is {object} the main object in this image? Please answer yes or no."


def test_presets_are_figure_8_word_for_word():
    processor = DeemProcessor.from_pretrained(TINY)
    head = "You are a helpful assistant.\n## USER: "
    assert processor.prompt("pope", object="cat") == (
        f"{head}{LEAD} <image> Is there a cat in the image? Please answer yes or no.\n## ASSISTANT: The answer is")
    assert processor.prompt("robustvqa", object="tench") == (
        f"{head}{LEAD} <image> Is tench the main object in this image? Please answer yes or no."
        "\n## ASSISTANT: The answer is")
    assert processor.prompt("vqa", question="What colour?") == (
        f"{head}{LEAD} <image>What colour? Please provide an accurate answer within one word."
        "\n## ASSISTANT: The answer is")
    assert processor.prompt("caption") == (
        f"{head}<image> Could you provide a short description of the image?\n## ASSISTANT: A photo of")


@pytest.mark.parametrize("benchmark, preset, question, fields", [
    ("pope", "pope", POPE_QUESTION.format(object="cat"), {"object": "cat"}),
    ("robustvqa", "robustvqa", ROBUST.format(object="tench"), {"object": "tench"}),
    ("vqav2", "vqa", VQA_QUESTION.format(question="What colour?"), {"question": "What colour?"}),
    ("caption", "caption", CAPTION_QUESTION, {}),
])
def test_deem_benchmark_prompts_are_the_presets(models, benchmark, preset, question, fields):  # noqa: F811
    answerer = ImageQuestionAnswerer(models / "deem-tiny", task=benchmark)
    assert answerer.prompt(question) == answerer.processor.prompt(preset, **fields)


def test_other_models_get_the_paper_question_in_their_own_template(models):  # noqa: F811
    question = POPE_QUESTION.format(object="cat")
    paper = ImageQuestionAnswerer(models / "llava-tiny", task="pope")
    assert paper.prompt(question) == f"user: {LEAD} <image> {question}assistant:"  # no DEEM answer prefix
    generic = ImageQuestionAnswerer(models / "llava-tiny", task="pope", prompt="generic")
    assert generic.prompt(question) == f"user: <image>{question}assistant:"
    deem = ImageQuestionAnswerer(models / "deem-tiny", task="pope", prompt="generic")
    assert deem.prompt(question).endswith(f"## USER: <image>{question}\n## ASSISTANT:")


def test_unknown_styles_and_tasks_are_refused(models):  # noqa: F811
    with pytest.raises(ValueError, match="Unknown prompt style 'fancy'"):
        ImageQuestionAnswerer(models / "deem-tiny", prompt="fancy")
    with pytest.raises(ValueError, match="No paper prompt for task 'nope'"):
        ImageQuestionAnswerer(models / "deem-tiny", task="nope")
    with pytest.raises(ValueError, match="No Figure 8 template"):
        question_prompt("nope", "?")


def test_run_settings_say_prompt_and_greedy_decoding(models):  # noqa: F811
    settings = ImageQuestionAnswerer(models / "deem-tiny", max_new_tokens=3, batch_size=5, task="pope").run_settings()
    assert settings["prompt"] == "paper" and settings["task"] == "pope"
    assert settings["prompt_template"].endswith(f"{LEAD} <image> {{question}}\n## ASSISTANT: The answer is")
    assert settings["generation"] == {"strategy": "greedy", "max_new_tokens": 3, "do_sample": False, "num_beams": 1,
                                      "batch_size": 5}


@pytest.mark.parametrize("style", ["paper", "generic"])
def test_the_results_file_records_the_prompt(models, data, tmp_path, style):  # noqa: F811
    results = tmp_path / "results"
    flags = [] if style == "paper" else ["--prompt", "generic"]
    evaluate_main(["pope", "--model", str(models / "deem-tiny"), "--data", str(data / "pope.jsonl"),
                   "--results-dir", str(results), "--max-new-tokens", "2", *flags])
    run = saved(results, "pope", "deem-tiny")["summary"]["run"]
    assert run["prompt"] == style
    assert ("The answer is" in run["prompt_template"]) == (style == "paper")
    assert run["decoding"]["do_sample"] is False and run["decoding"]["num_beams"] == 1


def test_for_task_reuses_the_loaded_model_with_the_other_benchmarks_prompt(models):  # noqa: F811
    pope = ImageQuestionAnswerer(models / "deem-tiny", task="pope")
    vqa = pope.for_task("vqav2")
    assert vqa.model is pope.model and vqa.processor is pope.processor  # no second load
    assert vqa.task == "vqa" and pope.task == "pope"  # the original keeps its own
    question = VQA_QUESTION.format(question="What colour?")
    assert vqa.prompt(question) == vqa.processor.prompt("vqa", question="What colour?")
    with pytest.raises(ValueError, match="No paper prompt for task 'nope'"):
        pope.for_task("nope")
