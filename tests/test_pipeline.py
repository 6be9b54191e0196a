"""pipeline("image-text-to-text") and AutoProcessor on a saved tiny DEEM, in a process outside the repository."""

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from isolated import run_isolated
from PIL import Image

from modeling_deem import DeemConfig, DeemForConditionalGeneration
from processing import DeemProcessor

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "hub_configs" / "deem-tiny"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """The tiny DEEM saved with its processor, a picture, and the answer the in-repo classes give for it."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    torch.manual_seed(0)
    folder = tmp_path / "deem-tiny"
    model = DeemForConditionalGeneration(DeemConfig.from_pretrained(TINY)).eval()
    processor = DeemProcessor.from_pretrained(TINY)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    image.save(tmp_path / "picture.png")
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
        add_generation_prompt=True, tokenize=False)
    inputs = processor(text=prompt, images=Image.open(tmp_path / "picture.png"))
    expected = processor.decode_new_tokens(model.generate(**inputs, max_new_tokens=6, do_sample=False),
                                           inputs["input_ids"].shape[1])[0]
    work = tmp_path / "elsewhere"
    work.mkdir()
    return {"folder": folder, "dir": tmp_path, "picture": tmp_path / "picture.png", "expected": expected,
            "work": work, "image_token_id": processor.image_token_id}


@pytest.fixture(scope="module")
def isolated(saved) -> dict:
    """One process outside the repository: what AutoProcessor loads, and the pipeline's answer for a chat image
    given as a PIL image, a path and an http URL (served here, on 127.0.0.1)."""
    handler = partial(SimpleHTTPRequestHandler, directory=str(saved["dir"]))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/picture.png"
    try:
        out = run_isolated(f"""
            import json
            from PIL import Image
            from transformers import AutoProcessor, pipeline
            folder = {str(saved["folder"])!r}
            processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
            print("LOADED" + json.dumps([type(processor).__name__, type(processor.image_processor).__name__,
                                         processor.image_token_id]))
            pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
            parts = {{"image": {{"type": "image", "image": Image.open({str(saved["picture"])!r})}},
                      "path": {{"type": "image", "path": {str(saved["picture"])!r}}},
                      "url": {{"type": "image", "url": {url!r}}}}}
            answers = {{}}
            for form, part in parts.items():
                messages = [{{"role": "user", "content": [part, {{"type": "text", "text": "What is this?"}}]}}]
                result = pipe(text=messages, max_new_tokens=6, generate_kwargs={{"do_sample": False}},
                              return_full_text=False)
                answers[form] = result[0]["generated_text"]
            print("ANSWERS" + json.dumps(answers))
        """, cwd=saved["work"])
    finally:
        server.shutdown()
        server.server_close()
    found = {tag.lower(): json.loads(line[len(tag):]) for line in out.splitlines() for tag in ("LOADED", "ANSWERS")
             if line.startswith(tag)}
    assert set(found) == {"loaded", "answers"}, out
    return found


def test_pipeline_and_auto_processor_as_remote_code(saved, isolated):
    assert isolated["loaded"] == ["DeemProcessor", "DeemImageProcessor", saved["image_token_id"]]
    assert isolated["answers"]["image"] == saved["expected"]


def test_pipeline_reads_chat_images_given_by_path_or_url(saved, isolated):
    """`{"type": "image", "path"/"url": ...}` parts, as every transformers chat model takes them (issue 11)."""
    assert (isolated["answers"]["path"], isolated["answers"]["url"]) == (saved["expected"], saved["expected"])
