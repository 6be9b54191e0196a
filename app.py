"""The DEEM demo page (Gradio; `app.py` at the root, as a Hugging Face Space expects).

    .venv/bin/python app.py [--model FOLDER_OR_HUB_ID] [--host 127.0.0.1] [--port 7860]

Four tabs: chat with an image (answers stream token by token), reconstruction from the image encoder's own tokens
(the CSR path: what the encoder "sees", beside the input), text to image (steps, guidance, seed, scheduler) and
interleaved text-and-image generation. The model is `--model`, else `$DEEM_DEMO_MODEL`, else
`hub_configs/deem-toy/` when it exists, else a freshly built deem-tiny with random weights (the page says so). It
loads once, when the app starts; every model call waits its turn (one at a time). Bad input (no image, a file that
is not an image, a huge image, an empty question) gets a message in the page, never a stack trace.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the page works offline
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import gradio as gr  # noqa: E402
import torch  # noqa: E402
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402
from transformers import TextIteratorStreamer  # noqa: E402

from modeling_deem import DeemConfig, DeemForConditionalGeneration  # noqa: E402
from processing import DeemProcessor  # noqa: E402

TOY, TINY = ROOT / "hub_configs" / "deem-toy", ROOT / "hub_configs" / "deem-tiny"
MAX_FILE_MB, MAX_SIDE = 20, 4096
FORMATS = "PNG, JPEG, WebP, BMP or GIF"
SCHEDULERS = {"DDPM (as trained)": DDPMScheduler, "DDIM": DDIMScheduler, "DPM-Solver++": DPMSolverMultistepScheduler,
              "Euler": EulerDiscreteScheduler}
PAGE_PROGRESS = gr.Progress()  # a handler's default: gradio passes each call its own progress bar in its place
logger = logging.getLogger("deem.demo")


class InputError(ValueError):
    """A problem with what the user gave; its message is shown in the page as it is."""


@dataclass
class DemoModel:
    """The model and processor the page serves, loaded once."""

    model: DeemForConditionalGeneration
    processor: DeemProcessor
    source: str
    random_weights: bool

    @classmethod
    def load(cls, source: str | None = None, device: str | None = None) -> DemoModel:
        """`source`: a saved DEEM folder or hub id; None: deem-toy if present, else a fresh deem-tiny (seed 0)."""
        source = source or os.environ.get("DEEM_DEMO_MODEL") or (str(TOY) if (TOY / "config.json").is_file() else None)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if source is None:
            torch.manual_seed(0)
            model = DeemForConditionalGeneration(DeemConfig.from_pretrained(TINY))
            processor, source, random_weights = DeemProcessor.from_pretrained(TINY), "deem-tiny (freshly built)", True
        else:
            model = DeemForConditionalGeneration.from_pretrained(source)
            processor, random_weights = model.processor or DeemProcessor.from_pretrained(source), False
        return cls(model.to(device).eval(), processor, source, random_weights)

    def describe(self) -> str:
        """The page's header line about the model."""
        config = self.model.config
        text = (f"**Model:** `{self.source}`, {self.model.num_parameters():,} parameters, on "
                f"{self.model.device.type}; " + (f"images {config.decoder_image_size} px out." if
                                                  config.with_image_decoder else "text output only (no image decoder)."))
        if self.random_weights:
            text += ("\n\n> ⚠️ **Random weights.** No trained checkpoint was given (`--model`), so this is a freshly "
                     "built deem-tiny: its answers and images are noise. The page shows the machinery, not quality.")
        return text


def read_image(path: str | None) -> Image.Image:
    """An uploaded file as an RGB image, or an `InputError` that says what is wrong with it."""
    if not path:
        raise InputError(f"Upload an image first ({FORMATS}).")
    name = Path(path).name
    if os.path.getsize(path) > MAX_FILE_MB * 1e6:
        raise InputError(f"{name} is larger than {MAX_FILE_MB} MB; upload a smaller image.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            width, height = image.size
            if max(width, height) > MAX_SIDE:
                raise InputError(f"{name} is {width}×{height} pixels, too large for this demo: scale it down to at "
                                 f"most {MAX_SIDE} pixels a side.")
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(f"{name} has too many pixels for this demo: scale it down to at most {MAX_SIDE} pixels "
                         "a side.") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"{name} is not an image this demo can read: upload a {FORMATS} file.") from error
    return image.convert("RGB")


def shown(image: Image.Image, size: int = 256) -> Image.Image:
    """Small images enlarged (nearest neighbour, so pixels stay visible) for the page."""
    if max(image.size) >= size:
        return image
    scale = size // max(image.size)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def guarded(handler: Callable[..., Iterator[tuple]], outputs: int) -> Callable[..., Iterator[tuple]]:
    """A streaming handler whose errors end as a status message (the last output) instead of a stack trace."""

    @wraps(handler)
    def run(*args: Any, **kwargs: Any) -> Iterator[tuple]:
        try:
            yield from handler(*args, **kwargs)
        except InputError as error:
            yield (*([None] * (outputs - 1)), f"⚠️ {error}")
        except Exception as error:  # noqa: BLE001 - a page shows a message; the log keeps the trace
            logger.exception("demo handler failed")
            yield (*([None] * (outputs - 1)), f"⚠️ Something went wrong ({type(error).__name__}): {error}")

    return run


@contextmanager
def denoising_progress(model: DeemForConditionalGeneration, progress: gr.Progress, total: int,
                       what: str) -> Iterator[None]:
    """Reports each UNet call (one per sampling step, guidance batched) to the page's progress bar."""
    steps = itertools.count(1)
    handle = model.unet.register_forward_hook(lambda *_: progress((min(next(steps), total), total), desc=what,
                                                                   unit="steps"))
    progress((0, total), desc=what, unit="steps")
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def using_scheduler(model: DeemForConditionalGeneration, name: str) -> Iterator[None]:
    """Samples with the named scheduler (made from the training noise schedule), then restores the model's own."""
    if name not in SCHEDULERS:
        raise InputError(f"Unknown scheduler {name!r}; pick one of {', '.join(SCHEDULERS)}.")
    previous = model.sampling_scheduler
    model.sampling_scheduler = SCHEDULERS[name].from_config(model.noise_scheduler.config)
    try:
        yield
    finally:
        model.sampling_scheduler = previous


def seeded(seed: float | None) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed or 0))


def whole(value: float | None, low: int, high: int, what: str) -> int:
    if value is None or not low <= value <= high:
        raise InputError(f"{what} must be between {low} and {high}.")
    return int(value)


class Handlers:
    """What the page's buttons run; each yields its outputs and, last, a status line."""

    def __init__(self, demo: DemoModel) -> None:
        self.demo, self.model, self.processor = demo, demo.model, demo.processor

    def chat(self, image_path: str | None, question: str | None, max_new_tokens: float) -> Iterator[tuple[str, str]]:
        """The answer to a question about an image, streamed as the tokens come."""
        image = read_image(image_path)
        question = (question or "").strip()
        if not question:
            raise InputError("Type a question about the image.")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[prompt], images=[image]).to(self.model.device)
        max_new_tokens = whole(max_new_tokens, 1, 512, "Max new tokens")
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                        timeout=300)
        failure: list[BaseException] = []

        def generate() -> None:
            try:
                self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer)
            except BaseException as error:  # noqa: BLE001 - re-raised in the page's thread below
                failure.append(error)
                streamer.end()

        started, answer = time.perf_counter(), ""
        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        for piece in streamer:
            answer += piece
            yield answer, "Answering…"
        worker.join()
        if failure:
            raise failure[0]
        yield answer, f"Done in {time.perf_counter() - started:.1f} s." + ("" if answer.strip() else
                                                                            " (The model answered nothing.)")

    def reconstruct(self, image_path: str | None, steps: float, guidance: float, seed: float, scheduler: str,
                    progress: gr.Progress = PAGE_PROGRESS) -> Iterator[tuple]:
        """The input, the encoder's view of it and the image the UNet rebuilds from the encoder's tokens."""
        image = read_image(image_path)
        steps = whole(steps, 1, 1000, "Steps")
        pixels = self.processor(text="<image>", images=[image])["pixel_values"]
        vision = self.model.config.vision_config
        view = pixels[0] * torch.tensor(vision.image_std)[:, None, None] + torch.tensor(vision.image_mean)[:, None, None]
        view = Image.fromarray((view.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
        started = time.perf_counter()
        with using_scheduler(self.model, scheduler), denoising_progress(self.model, progress, steps, "Rebuilding"):
            rebuilt = self.model.reconstruct_images(pixels.to(self.model.device, self.model.dtype),
                                                    num_inference_steps=steps, guidance_scale=float(guidance),
                                                    generator=seeded(seed))[0]
        yield (shown(image), shown(view), shown(rebuilt),
               f"Done in {time.perf_counter() - started:.1f} s: the encoder saw a {view.width} px view; the decoder "
               f"drew {rebuilt.width} px (shown enlarged).")

    def text_to_image(self, prompt: str | None, steps: float, guidance: float, seed: float, scheduler: str,
                      progress: gr.Progress = PAGE_PROGRESS) -> Iterator[tuple]:
        """An image from a description (the NIP path: the LLM's states condition the UNet)."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise InputError("Type a description of the image to draw.")
        steps = whole(steps, 1, 1000, "Steps")
        inputs = self.processor(text=[prompt]).to(self.model.device)
        started = time.perf_counter()
        with using_scheduler(self.model, scheduler), denoising_progress(self.model, progress, steps, "Drawing"):
            image = self.model.generate(**inputs, generation_mode="image", num_inference_steps=steps,
                                        guidance_scale=float(guidance), generator=seeded(seed))[0]
        yield shown(image), f"Done in {time.perf_counter() - started:.1f} s ({scheduler}, {steps} steps, seed " \
                            f"{int(seed or 0)}; {image.width} px, shown enlarged)."

    def interleaved(self, prompt: str | None, max_images: float, max_new_tokens: float, steps: float, seed: float,
                    progress: gr.Progress = PAGE_PROGRESS) -> Iterator[tuple]:
        """A document continued with text and images, in order."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise InputError("Type the start of a document to continue.")
        steps, max_images = whole(steps, 1, 1000, "Steps"), whole(max_images, 0, 8, "Images")
        inputs = self.processor(text=prompt)
        started = time.perf_counter()
        with denoising_progress(self.model, progress, steps * max(max_images, 1), "Writing and drawing"):
            parts = self.processor.decode_interleaved(self.model.generate_interleaved(
                input_ids=inputs["input_ids"].to(self.model.device), max_images=max_images,
                max_new_tokens=whole(max_new_tokens, 1, 512, "Max new tokens"), num_inference_steps=steps,
                generator=seeded(seed), do_sample=False))
        images = [shown(part) for part in parts if isinstance(part, Image.Image)]
        text, count = prompt, 0
        for part in parts:
            if isinstance(part, Image.Image):
                count += 1
                text += f" **[image {count}]** "
            else:
                text += part
        note = "" if images else " The model started no image (it decides when to, with `<|startofimage|>`)."
        yield text, images, f"Done in {time.perf_counter() - started:.1f} s: {len(images)} image(s).{note}"


def status_box(elem_id: str) -> gr.Markdown:
    return gr.Markdown("", elem_id=elem_id, elem_classes=["status"])


def image_upload(elem_id: str, height: int) -> gr.Image:
    """An image input that hands over the uploaded file's path undecoded, so `read_image` can say what is wrong
    with a file (gradio's own decoding fails with a bare "Error"). Not a subclass: gradio writes a `.pyi` stub
    beside any module that defines a component class."""
    upload = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"], height=height, elem_id=elem_id)
    upload.preprocess = lambda payload: None if payload is None else payload.path
    return upload


def build_demo(demo: DemoModel) -> gr.Blocks:
    """The page over a loaded model."""
    handlers = Handlers(demo)
    run = {"concurrency_id": "deem", "concurrency_limit": 1}  # one model call at a time, the rest queue
    image_decoder = demo.model.config.with_image_decoder
    with gr.Blocks(title="DEEM demo") as page:
        gr.Markdown("# DEEM: diffusion models as the eyes of an LLM\nAsk about an image, see what the image encoder "
                    "keeps of it, draw images from text, or let the model continue a document with text and images.")
        gr.Markdown(demo.describe(), elem_id="model-info")
        with gr.Tab("Chat with an image", id="chat"):
            with gr.Row():
                with gr.Column():
                    image = image_upload("chat-image", height=280)
                    question = gr.Textbox(label="Question", placeholder="What colour is the shape?", lines=2,
                                          elem_id="chat-question")
                    tokens = gr.Slider(1, 128, value=24, step=1, label="Max new tokens")
                    ask = gr.Button("Ask", variant="primary", elem_id="chat-ask")
                with gr.Column():
                    answer = gr.Textbox(label="Answer", lines=6, interactive=False, elem_id="chat-answer")
                    chat_status = status_box("chat-status")
            events = [ask.click, question.submit]
            for event in events:
                event(guarded(handlers.chat, 2), [image, question, tokens], [answer, chat_status], **run)
        with gr.Tab("Reconstruction", id="reconstruct", visible=image_decoder):
            gr.Markdown("The UNet rebuilds the image from the image encoder's own tokens (the CSR path): what "
                        "survives is what the encoder sees.")
            with gr.Row():
                with gr.Column(scale=1):
                    source = image_upload("rec-image", height=220)
                    rec_controls = sampling_controls("rec")
                    rebuild = gr.Button("Reconstruct", variant="primary", elem_id="rec-run")
                with gr.Column(scale=2):
                    with gr.Row():
                        original = gr.Image(label="Input", interactive=False, height=260, elem_id="rec-input")
                        view = gr.Image(label="Encoder's view", interactive=False, height=260, elem_id="rec-view")
                        rebuilt = gr.Image(label="Reconstruction", interactive=False, height=260,
                                           elem_id="rec-output")
                    rec_status = status_box("rec-status")
            rebuild.click(guarded(handlers.reconstruct, 4), [source, *rec_controls],
                          [original, view, rebuilt, rec_status], **run)
        with gr.Tab("Text to image", id="t2i", visible=image_decoder):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="Description", placeholder="A photo of a red square.", lines=2,
                                        elem_id="t2i-prompt")
                    t2i_controls = sampling_controls("t2i")
                    draw = gr.Button("Generate", variant="primary", elem_id="t2i-run")
                with gr.Column():
                    drawn = gr.Image(label="Generated image", interactive=False, height=320, elem_id="t2i-output")
                    t2i_status = status_box("t2i-status")
            draw.click(guarded(handlers.text_to_image, 2), [prompt, *t2i_controls], [drawn, t2i_status], **run)
        with gr.Tab("Interleaved", id="interleaved", visible=image_decoder):
            with gr.Row():
                with gr.Column():
                    start = gr.Textbox(label="Start of a document", placeholder="A story in pictures: ", lines=2,
                                       elem_id="int-prompt")
                    images = gr.Slider(0, 4, value=2, step=1, label="Images at most")
                    words = gr.Slider(1, 256, value=32, step=1, label="Max new tokens")
                    steps = gr.Slider(1, 250, value=25, step=1, label="Steps per image", elem_id="int-steps")
                    seed = gr.Number(value=0, precision=0, label="Seed")
                    write = gr.Button("Continue", variant="primary", elem_id="int-run")
                with gr.Column():
                    document = gr.Markdown(elem_id="int-text")
                    gallery = gr.Gallery(label="Images", columns=4, height=200, elem_id="int-gallery")
                    int_status = status_box("int-status")
            write.click(guarded(handlers.interleaved, 3), [start, images, words, steps, seed],
                        [document, gallery, int_status], **run)
    return page


def sampling_controls(prefix: str) -> list[gr.components.Component]:
    """Steps, guidance, seed and scheduler, in that order."""
    with gr.Accordion("Sampling", open=True):
        return [gr.Slider(1, 250, value=25, step=1, label="Steps", elem_id=f"{prefix}-steps"),
                gr.Slider(1.0, 10.0, value=3.5, step=0.5, label="Guidance scale", elem_id=f"{prefix}-guidance"),
                gr.Number(value=0, precision=0, label="Seed", elem_id=f"{prefix}-seed"),
                gr.Dropdown(list(SCHEDULERS), value=next(iter(SCHEDULERS)), label="Scheduler",
                            elem_id=f"{prefix}-scheduler")]


def launch(page: gr.Blocks, host: str | None = None, port: int | None = None, block: bool = True) -> gr.Blocks:
    """Serve the page (queued: long work shows its progress); `block=False` returns once it is up."""
    page.queue(default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, max_file_size=f"{MAX_FILE_MB}mb", ssr_mode=False,
                prevent_thread_lock=not block, show_error=False, footer_links=[], run_history=False,
                css=".status p { font-size: 1.05em; }")
    return page


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="saved DEEM folder or hub id (default: hub_configs/deem-toy "
                        "when it exists, else a fresh deem-tiny with random weights)")
    parser.add_argument("--host", default=None, help="default 127.0.0.1 ($GRADIO_SERVER_NAME on a Space)")
    parser.add_argument("--port", type=int, default=None, help="default 7860 ($GRADIO_SERVER_PORT)")
    parser.add_argument("--device", default=None, help="default cuda when there is one, else cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    launch(build_demo(DemoModel.load(args.model, args.device)), args.host, args.port)


if __name__ == "__main__":
    main()
