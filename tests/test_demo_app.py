"""The demo page (app.py) and the model card.

The page: its handlers and input checks called directly, then the whole page in headless Chromium (Debian's
`chromium` + `chromium-driver`, which scripts/setup.sh installs): upload an image, ask, reconstruct, generate,
continue a document, bad inputs, screenshots (outputs/demo_app/ or $DEEM_DEMO_SCREENSHOTS).
The card: what `save_pretrained` writes (after a real DeemTrainer run), which README.md it keeps, base models
from the config, and `python -m evaluation ... --update-card`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY
from huggingface_hub import ModelCard
from PIL import Image

sys.path.insert(0, str(ROOT))
import app  # noqa: E402
from modeling_deem import DeemConfig, DeemForConditionalGeneration  # noqa: E402
from modeling_deem.model_card_deem import CARD_MARKER, base_models, model_card  # noqa: E402
from modeling_deem.tiny import tiny_config_dict  # noqa: E402
from processing import DeemProcessor  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = Path(os.environ.get("DEEM_DEMO_SCREENSHOTS", ROOT / "outputs" / "demo_app"))


@pytest.fixture(scope="module")
def demo() -> app.DemoModel:
    return app.DemoModel.load(None)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("uploads")
    Image.new("RGB", (120, 90), (200, 30, 30)).save(folder / "red.png")
    Image.new("RGB", (5000, 16), (0, 0, 0)).save(folder / "wide.png")  # few bytes, too many pixels a side
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_text("not an image either")  # an image's name, not an image's bytes
    return {name.split(".")[0]: str(folder / name) for name in ("red.png", "wide.png", "notes.txt", "broken.png")}


class Progress:
    """Stands in for gr.Progress: records what the page's progress bar would show."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, progress: tuple[int, int], desc: str | None = None, **kwargs) -> None:
        self.calls.append(progress)


def last(outputs):
    return list(outputs)[-1]


def test_bad_input_gets_a_readable_message(demo, images):
    chat = app.guarded(app.Handlers(demo).chat, 2)
    expected = {(None, "What?"): "Upload an image first", (images["notes"], "What?"): "notes.txt is not an image",
                (images["broken"], "What?"): "broken.png is not an image",
                (images["wide"], "What?"): "wide.png is 5000×16 pixels, too large", (images["red"], "  "): "Type a question"}
    for (image, question), message in expected.items():
        answer, status = last(chat(image, question, 4))
        assert answer is None and status.startswith("⚠️") and message in status, status
        assert "Traceback" not in status
    t2i = app.guarded(app.Handlers(demo).text_to_image, 2)
    assert "Type a description" in last(t2i("", 2, 3.5, 0, "DDIM", progress=Progress()))[-1]
    assert "Unknown scheduler" in last(t2i("A red square.", 2, 3.5, 0, "PLMS", progress=Progress()))[-1]


def test_chat_streams_the_answer(demo, images):
    outputs = list(app.guarded(app.Handlers(demo).chat, 2)(images["red"], "What colour is it?", 8))
    assert len(outputs) >= 3 and all(status == "Answering…" for _, status in outputs[:-1])
    assert outputs[-1][1].startswith("Done") and outputs[-1][0].startswith(outputs[0][0])
    assert all(outputs[i + 1][0].startswith(outputs[i][0]) for i in range(len(outputs) - 2))


def test_image_tabs_report_progress_and_keep_the_scheduler(demo, images):
    handlers, scheduler = app.Handlers(demo), demo.model.sampling_scheduler
    progress = Progress()
    original, view, rebuilt, status = last(handlers.reconstruct(images["red"], 2, 3.5, 0, "DPM-Solver++", progress))
    assert status.startswith("Done") and view.size == rebuilt.size == (256, 256)  # 64 / 32 px, enlarged
    assert progress.calls == [(0, 2), (1, 2), (2, 2)]
    image, status = last(handlers.text_to_image("A red square.", 2, 3.5, 0, "Euler", progress=Progress()))
    assert isinstance(image, Image.Image) and "Euler, 2 steps" in status
    assert demo.model.sampling_scheduler is scheduler
    text, gallery, status = last(handlers.interleaved("A story: ", 1, 8, 2, 0, progress=Progress()))
    assert text.startswith("A story:") and status.startswith("Done")


def test_the_default_model_is_deem_toy_when_it_exists(tmp_path, monkeypatch):
    shipped = app.DemoModel.load(None)  # hub_configs/deem-toy ships with the repository
    assert shipped.source == str(app.TOY) and not shipped.random_weights
    assert "Random weights" not in shipped.describe()
    monkeypatch.setattr(app, "TOY", tmp_path / "absent")
    fresh = app.DemoModel.load(None)
    assert fresh.random_weights and "Random weights" in fresh.describe()
    monkeypatch.setattr(app, "TOY", tmp_path / "deem-toy")
    fresh.model.processor = fresh.processor
    fresh.model.save_pretrained(tmp_path / "deem-toy")
    toy = app.DemoModel.load(None)
    assert toy.source == str(tmp_path / "deem-toy") and not toy.random_weights
    assert "Random weights" not in toy.describe()
    served = []
    monkeypatch.setattr(app, "launch", lambda page, host, port: served.append((page, host, port)))
    app.main(["--model", str(tmp_path / "deem-toy"), "--port", "7999"])  # the command line: same model, served
    page, _, port = served[0]
    assert port == 7999 and any(str(tmp_path / "deem-toy") in str(component["props"].get("value"))
                                for component in page.config["components"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def browser(monkeypatch):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("No Chromium here: the browser test needs Debian's chromium and chromium-driver "
                    "(scripts/setup.sh installs them).")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager look for a browser online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_in_a_real_browser(demo, images, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    page = app.launch(app.build_demo(demo), "127.0.0.1", free_port(), block=False)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    wait = WebDriverWait(browser, 60)
    find = browser.find_element

    def status(prefix: str, contains: str) -> str:
        wait.until(lambda _: contains in find(By.ID, f"{prefix}-status").text)
        return find(By.ID, f"{prefix}-status").text

    def upload(prefix: str, path: str) -> None:
        find(By.CSS_SELECTOR, f"#{prefix}-image input[type=file]").send_keys(path)
        wait.until(lambda _: find(By.CSS_SELECTOR, f"#{prefix}-image img").get_attribute("src"))

    def clear_upload(prefix: str) -> None:
        find(By.CSS_SELECTOR, f"#{prefix}-image button[aria-label='Remove Image']").click()
        wait.until(lambda _: not browser.find_elements(By.CSS_SELECTOR, f"#{prefix}-image img"))

    def type_into(selector: str, text: str) -> None:
        field = find(By.CSS_SELECTOR, selector)
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(text, Keys.TAB)

    def open_tab(title: str) -> None:
        next(b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == title).click()

    try:
        started = time.perf_counter()
        browser.get(page.local_url)
        wait.until(lambda _: "deem-toy" in find(By.ID, "model-info").text)  # the shipped toy DEEM, by default

        # Chat: every bad input first, then a question about a real image, answered.
        find(By.ID, "chat-ask").click()
        assert "Upload an image first" in status("chat", "⚠️")
        type_into("#chat-question textarea", "What colour is the shape?")
        find(By.CSS_SELECTOR, "#chat-image input[type=file]").send_keys(images["notes"])  # refused by the page
        wait.until(lambda _: "Invalid file type: notes.txt" in find(By.TAG_NAME, "body").text)
        find(By.CSS_SELECTOR, "[data-testid=toast-close]").click()
        upload("chat", images["broken"])
        find(By.ID, "chat-ask").click()
        assert "broken.png is not an image" in status("chat", "not an image")
        clear_upload("chat")
        upload("chat", images["wide"])
        find(By.ID, "chat-ask").click()
        assert "too large" in status("chat", "too large")
        clear_upload("chat")
        upload("chat", images["red"])
        type_into("#chat-question textarea", " ")
        find(By.ID, "chat-ask").click()
        assert "Type a question" in status("chat", "Type a question")
        type_into("#chat-question textarea", "What colour is the shape?")
        find(By.ID, "chat-ask").click()
        status("chat", "Done")
        assert find(By.CSS_SELECTOR, "#chat-answer textarea").get_attribute("value").strip()
        assert "Traceback" not in browser.page_source
        browser.save_screenshot(str(SCREENSHOTS / "chat.png"))

        # Reconstruction: input, the encoder's view and the rebuilt image side by side.
        open_tab("Reconstruction")
        upload("rec", images["red"])
        type_into("#rec-steps input[type=number]", "2")
        find(By.ID, "rec-run").click()
        status("rec", "Done")
        for output in ("rec-input", "rec-view", "rec-output"):
            wait.until(lambda _, output=output: browser.find_elements(By.CSS_SELECTOR, f"#{output} img"))
        browser.save_screenshot(str(SCREENSHOTS / "reconstruction.png"))

        # Text to image: long work shows its progress; then a quick one with a scheduler of its own.
        open_tab("Text to image")
        type_into("#t2i-prompt textarea", "A photo of a red square.")
        type_into("#t2i-steps input[type=number]", "80")
        find(By.ID, "t2i-run").click()
        WebDriverWait(browser, 60, poll_frequency=0.05).until(lambda _: "/80 steps" in find(By.ID, "t2i-output").text)
        status("t2i", "80 steps")
        type_into("#t2i-steps input[type=number]", "2")
        find(By.ID, "t2i-run").click()
        assert "2 steps" in status("t2i", "Done")
        wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, "#t2i-output img"))
        browser.save_screenshot(str(SCREENSHOTS / "text_to_image.png"))

        open_tab("Interleaved")
        type_into("#int-prompt textarea", "A story in pictures: ")
        type_into("#int-steps input[type=number]", "2")
        find(By.ID, "int-run").click()
        status("int", "Done")
        assert "A story in pictures" in find(By.ID, "int-text").text
        browser.save_screenshot(str(SCREENSHOTS / "interleaved.png"))
        assert time.perf_counter() - started < 120
    except BaseException:
        browser.save_screenshot(str(SCREENSHOTS / "failure.png"))  # what the page showed when it went wrong
        raise
    finally:
        page.close()


# The model card ---------------------------------------------------------------------------------------------------


def tiny_with_processor(seed: int = 0) -> DeemForConditionalGeneration:
    torch.manual_seed(seed)
    model = DeemForConditionalGeneration(DeemConfig.from_pretrained(TINY))
    model.processor = DeemProcessor.from_pretrained(TINY)
    return model


def test_save_writes_a_card_with_the_stage_and_losses(tmp_path):
    from trainers import STAGES, DeemDataCollator, DeemTrainer, make_shapes_dataset

    model = tiny_with_processor()
    args = STAGES["stage1"].training_arguments(str(tmp_path / "run"), max_steps=2, warmup_steps=1, logging_steps=1,
                                               per_device_train_batch_size=2, save_strategy="no", report_to="none",
                                               use_cpu=True, dataloader_num_workers=0)
    trainer = DeemTrainer(model=model, args=args, stage="stage1", train_dataset=make_shapes_dataset(num_rows=4),
                          data_collator=DeemDataCollator(model.processor), processing_class=model.processor)
    trainer.train()
    trainer.save_model(str(tmp_path / "my-deem"))
    card = ModelCard.load(tmp_path / "my-deem" / "README.md")
    assert card.data.pipeline_tag == "image-text-to-text" and card.data.library_name == "transformers"
    assert card.data.license == "apache-2.0" and {"deem", "deem-stage1"} <= set(card.data.tags)
    assert CARD_MARKER in card.text and "stage `stage1`" in card.text and "step 2 of 2" in card.text
    last_log = next(entry for entry in reversed(trainer.state.log_history) if "ntp_loss" in entry)
    assert f"| NTP (next token) | {last_log['ntp_loss']:.4g} |" in card.text
    assert "trust_remote_code=True" in card.text and 'pipeline("image-text-to-text"' in card.text
    assert "No evaluation results yet" in card.text
    assert (tmp_path / "my-deem" / "model_card_deem.py").is_file()  # the remote code carries it
    untrained = tiny_with_processor()
    untrained.save_pretrained(tmp_path / "fresh")
    text = (tmp_path / "fresh" / "README.md").read_text()
    assert "No training record" in text and "Random weights" in text


def test_a_card_someone_wrote_is_kept(tmp_path):
    model = tiny_with_processor()
    model.save_pretrained(tmp_path / "m")
    generated = (tmp_path / "m" / "README.md").read_text()
    model.training_summary = {"stage": "stage2", "global_step": 7, "max_steps": 9, "losses": {"loss": 1.5}}
    model.save_pretrained(tmp_path / "m")  # ours: rewritten
    assert (tmp_path / "m" / "README.md").read_text() != generated and "stage `stage2`" in (
        tmp_path / "m" / "README.md").read_text()
    mine = "# My DEEM\n\nNotes I wrote.\n"
    (tmp_path / "m" / "README.md").write_text(mine)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "README.md").read_text() == mine
    edited = (tmp_path / "m" / "README.md")
    edited.write_text(generated.replace(CARD_MARKER + "\n", "") + "\nMy own line.\n")  # marker deleted: kept
    model.save_pretrained(tmp_path / "m")
    assert edited.read_text().endswith("My own line.\n")


def test_base_models_come_from_the_config():
    values = tiny_config_dict()
    values["text_config"] = {**values["text_config"], "_name_or_path": "lmsys/vicuna-7b-v1.5"}
    values["diffusion_model_name_or_path"] = "stabilityai/stable-diffusion-2-1-base"
    values["vision_config"] = {**values["vision_config"], "open_clip_model_name": "convnext_base_w_320",
                               "open_clip_pretrained": "laion_aesthetic_s13b_b82k"}
    config = DeemConfig(**values)
    assert base_models(config) == ["lmsys/vicuna-7b-v1.5", "stabilityai/stable-diffusion-2-1-base"]
    card = model_card(config, "deem-7b-stage1")
    assert card.data.base_model == base_models(config) and card.data.license == "other"
    assert "`convnext_base_w_320 (laion_aesthetic_s13b_b82k)`" in card.text and "Random weights" not in card.text
    assert base_models(DeemConfig.from_pretrained(TINY)) == []


def test_evaluation_adds_a_results_table_to_the_card(tmp_path):
    from evaluation.__main__ import main as evaluate_main
    from evaluation.model_card import update_card

    tiny_with_processor().save_pretrained(tmp_path / "deem")
    Image.new("RGB", (40, 30), (200, 0, 0)).save(tmp_path / "0.png")
    rows = [{"image": "0.png", "object": "cat", "label": "yes", "split": "random"},
            {"image": "0.png", "object": "dog", "label": "no", "split": "random"}]
    (tmp_path / "pope.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    for _ in range(2):  # a rerun replaces its own scores
        assert evaluate_main(["pope", "--model", str(tmp_path / "deem"), "--data", str(tmp_path / "pope.jsonl"),
                              "--results-dir", str(tmp_path / "results"), "--update-card"]) == 0
    card = ModelCard.load(tmp_path / "deem" / "README.md")
    summary = json.loads(next((tmp_path / "results" / "pope").glob("*/deem-*.json")).read_text())["summary"]
    results = {(r.dataset_type, r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results == {("pope", "paper", k): round(v, 6) for k, v in summary["scores"].items()}
    assert "**pope**\n\n| data | prompt |" in card.text and "No evaluation results yet" not in card.text
    assert f"{100 * summary['scores']['accuracy']:.2f}" in card.text and CARD_MARKER in card.text
    update_card(tmp_path / "deem", {**summary, "prompt": "generic"})  # another prompt: a row of its own
    assert len(ModelCard.load(tmp_path / "deem" / "README.md").data.eval_results) == 2 * len(summary["scores"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "README.md").write_text("# Someone's model\n")
    update_card(tmp_path / "other", summary)
    text = (tmp_path / "other" / "README.md").read_text()
    assert "# Someone's model" in text and "## Evaluation results" in text
    assert "not a local folder" in update_card("org/hub-model", summary)
