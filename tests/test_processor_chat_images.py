"""Images named by a string — a path, an http(s) URL, base64 — in chat messages and in direct calls (issue 11).

transformers' `apply_chat_template` hands the processor what `{"type": "image", "url"/"path"/"base64": ...}` parts
hold, as strings; they are read as `image_inputs_deem` says (files by PIL at full precision, URLs and base64 by
transformers' `load_image`), and a source that cannot be read is an error naming it.
"""

import base64
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from processing import DeemImageProcessor, DeemProcessor


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    path = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An http server on 127.0.0.1 serving tmp_path; yields its base URL."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def chat(part: dict) -> list[dict]:
    return [{"role": "user", "content": [part, {"type": "text", "text": "What is it?"}]}]


def from_chat(processor: DeemProcessor, part: dict) -> dict:
    return processor.apply_chat_template(chat(part), add_generation_prompt=True, tokenize=True, return_dict=True)


def reference(processor: DeemProcessor, picture: Path) -> torch.Tensor:
    return processor(text="<image>", images=Image.open(picture))["pixel_values"]


def test_chat_image_given_by_path_reads_like_the_opened_file(processor, picture):
    out = from_chat(processor, {"type": "image", "path": str(picture)})
    assert int((out["input_ids"] == processor.image_token_id).sum()) == processor.num_image_tokens
    torch.testing.assert_close(out["pixel_values"], reference(processor, picture), rtol=0, atol=0)


def test_chat_image_given_by_url_is_fetched(processor, picture, served):
    out = from_chat(processor, {"type": "image", "url": f"{served}/picture.png"})
    torch.testing.assert_close(out["pixel_values"], reference(processor, picture), rtol=0, atol=0)


@pytest.mark.parametrize("form", ["base64", "data URI in url"])
def test_chat_image_given_as_base64(processor, picture, form):
    data = base64.b64encode(picture.read_bytes()).decode()
    part = {"type": "image", "base64": data} if form == "base64" else {
        "type": "image", "url": f"data:image/png;base64,{data}"}
    out = from_chat(processor, part)
    torch.testing.assert_close(out["pixel_values"], reference(processor, picture), rtol=0, atol=0)


def test_unreachable_image_url_error_names_the_url(processor, served):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/picture.png"
    with pytest.raises(ValueError, match=rf"Image 0: Cannot load the image at the URL '{closed}' \(ConnectError"):
        from_chat(processor, {"type": "image", "url": closed})
    missing = f"{served}/missing.png"  # a 404 page is no image either
    with pytest.raises(ValueError, match=rf"Cannot load the image at the URL '{missing}'"):
        from_chat(processor, {"type": "image", "url": missing})


def test_missing_image_path_error_names_the_path(processor, tmp_path):
    missing = tmp_path / "nowhere.png"
    with pytest.raises(ValueError, match=rf"Cannot load the image '{missing}': it is no file, no http\(s\) URL"):
        from_chat(processor, {"type": "image", "path": str(missing)})
    with pytest.raises(ValueError, match=rf"No image file at '{missing}'"):
        processor(text="<image>", images=missing)


def test_processor_and_image_processor_take_image_strings_directly(processor, picture):
    """The rule of transformers' image processors (`fetch_images`): a path, URL or base64 string is an image."""
    expected = reference(processor, picture)
    for source in (str(picture), picture):
        torch.testing.assert_close(processor(text="<image>", images=source)["pixel_values"], expected, rtol=0, atol=0)
        torch.testing.assert_close(processor.image_processor(source)["pixel_values"], expected, rtol=0, atol=0)
    fetched = processor.image_processor.fetch_images([[str(picture)], Image.open(picture)])
    assert isinstance(fetched[0][0], Image.Image) and isinstance(fetched[1], Image.Image)


def test_16_bit_png_path_keeps_its_precision(tmp_path):
    """A file is opened by PIL as it is (transformers' `load_image` would clip a 16-bit PNG to 8 bits: white)."""
    grey = np.random.default_rng(1).integers(0, 65536, (12, 12), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")
    image_processor = DeemImageProcessor(size=8)
    from_path = image_processor(str(tmp_path / "deep.png"), do_normalize=False)["pixel_values"]
    from_array = image_processor(grey, do_normalize=False)["pixel_values"]
    torch.testing.assert_close(from_path, from_array, rtol=0, atol=1e-6)
    assert from_path.mean() < 0.9  # not clipped to white
