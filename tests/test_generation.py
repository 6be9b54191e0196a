"""Text, image, reconstruction, interleaved and region generation on the tiny model."""


import numpy as np
import pytest
import torch
from conftest import TINY
from diffusers import DDIMScheduler
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from modeling_deem import DeemConfig, DeemForConditionalGeneration


@pytest.fixture(scope="module")
def model() -> DeemForConditionalGeneration:
    torch.manual_seed(0)
    return DeemForConditionalGeneration(DeemConfig.from_pretrained(TINY)).eval()


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))


def test_cached_and_uncached_greedy_agree_in_a_left_padded_batch(model, processor):
    inputs = processor(text=[processor.prompt("caption"), processor.prompt("vqa", question="What is here?")],
                       images=[picture(0), picture(1)], padding_side="left")
    cached = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    uncached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert cached.shape == (2, inputs["input_ids"].shape[1] + 6)


def test_batched_generation_matches_one_at_a_time(model, processor):
    prompts = [processor.prompt("caption"), processor.prompt("pope", object="cat")]
    images = [picture(0), picture(1)]
    batch = processor(text=prompts, images=images, padding_side="left")
    together = processor.decode_new_tokens(model.generate(**batch, max_new_tokens=5, do_sample=False),
                                           batch["input_ids"].shape[1])
    for prompt, image, expected in zip(prompts, images, together):
        single = processor(text=prompt, images=image)
        alone = processor.decode_new_tokens(model.generate(**single, max_new_tokens=5, do_sample=False),
                                            single["input_ids"].shape[1])
        assert alone == [expected]


def test_beam_search_and_sampling(model, processor):
    inputs = processor(text=[processor.prompt("caption")] * 2, images=[picture(0), picture(1)], padding_side="left")
    beams = model.generate(**inputs, max_new_tokens=4, num_beams=3, do_sample=False)
    assert beams.shape[0] == 2
    torch.manual_seed(0)
    first = model.generate(**inputs, max_new_tokens=4, do_sample=True, top_k=20)
    torch.manual_seed(0)
    again = model.generate(**inputs, max_new_tokens=4, do_sample=True, top_k=20)
    assert torch.equal(first, again)


def test_image_generation_is_seeded_and_swappable(model, processor):
    inputs = processor(text=["A photo of a red square.", "A blue circle."], padding_side="left")
    run = lambda seed: model.generate(**inputs, generation_mode="image", num_inference_steps=4,  # noqa: E731
                                      generator=torch.Generator().manual_seed(seed))
    first, again, other = run(0), run(0), run(1)
    assert len(first) == 2 and all(isinstance(im, Image.Image) and im.size == (32, 32) for im in first)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(other[0]))
    assert type(model.image_pipeline.scheduler).__name__ == "DDPMScheduler"
    model.sampling_scheduler = DDIMScheduler.from_config(model.noise_scheduler.config)
    try:
        ddim = model.generate(**inputs, generation_mode="image", num_inference_steps=3, output_type="pt",
                              generator=torch.Generator().manual_seed(0))
        assert ddim.shape == (2, 3, 32, 32) and float(ddim.min()) >= 0 and float(ddim.max()) <= 1
    finally:
        model.sampling_scheduler = None


def test_image_generation_uses_the_context(model, processor):
    """Different prompts give different conditions; the prompt's own <|startofimage|> is used when present."""
    a = model.prompt_conditions(**processor(text="A photo of a red square."))
    b = model.prompt_conditions(**processor(text="A blue circle."))
    assert not torch.allclose(a, b)
    with_soi = processor(text="A photo of a red square.<|startofimage|>")
    torch.testing.assert_close(model.prompt_conditions(**with_soi), a)
    with pytest.raises(ValueError, match="generation_mode must be"):
        model.generate(**with_soi, generation_mode="video")


def test_right_padded_prompts_are_refused_for_images(model, processor):
    inputs = processor(text=["A photo of a red square.", "A"], padding_side="right")
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(**inputs, generation_mode="image", num_inference_steps=2)


def test_reconstruction_from_the_encoders_condition(model, processor):
    pixels = processor(text="<image><image>", images=[picture(0), picture(1)])["pixel_values"]
    images = model.reconstruct_images(pixels, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert len(images) == 2 and images[0].size == (32, 32)


def forced_scores(scores: torch.Tensor, forced: int | None, soi: int, eos: int) -> torch.Tensor:
    """Only `forced` possible; or, when None, anything but <|startofimage|> and EOS."""
    if forced is None:
        scores[:, [soi, eos]] = -float("inf")
        return scores
    scores = torch.full_like(scores, -float("inf"))
    scores[:, forced] = 0
    return scores


class ForceImageThenEnd(LogitsProcessor):
    """Emits <|startofimage|> as the 3rd new token of the first call, then ends the document."""

    def __init__(self, soi: int, eos: int, prompt_length: int) -> None:
        self.soi, self.eos, self.prompt_length, self.calls = soi, eos, prompt_length, 0

    def __call__(self, input_ids, scores):
        new = input_ids.shape[1] - self.prompt_length
        forced = self.soi if new == 2 else self.eos if new > 2 + 77 + 1 else None
        return forced_scores(scores, forced, self.soi, self.eos)


def test_interleaved_generation_feeds_the_image_back(model, processor):
    inputs = processor(text="A photo of")
    forcing = ForceImageThenEnd(processor.image_start_token_id, processor.tokenizer.eos_token_id,
                                inputs["input_ids"].shape[1])
    parts = model.generate_interleaved(**inputs, max_new_tokens=12, max_images=1, num_inference_steps=2,
                                       do_sample=False, logits_processor=LogitsProcessorList([forcing]),
                                       generator=torch.Generator().manual_seed(0))
    kinds = [type(p).__name__ for p in parts]
    assert kinds == ["Tensor", "Image", "Tensor"], kinds
    assert len(parts[0]) == 2
    decoded = processor.decode_interleaved(parts)
    assert isinstance(decoded[0], str) and decoded[1] is parts[1] and isinstance(decoded[2], str)
    with pytest.raises(ValueError, match="one document at a time"):
        model.generate_interleaved(**processor(text=["a", "b"], padding_side="left"))


def test_region_masks_change_the_image_tokens(model, processor):
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[10:30, 5:40] = 1
    whole = processor(text=processor.prompt("region"), images=[picture(0), picture(0)])
    region = processor(text=processor.prompt("region"), images=[picture(0), picture(0)], image_masks=[None, mask])
    assert region["image_masks"].shape == (2, 64, 64) and bool(region["image_masks"][0].all())
    a = model.get_image_features(whole["pixel_values"]).image_embeds
    b = model.get_image_features(region["pixel_values"], region["image_masks"]).image_embeds
    torch.testing.assert_close(a[0], b[0])  # the whole-image slot is unchanged
    assert not torch.allclose(a[1], b[1])  # the region slot sees only the region
    out = model.generate(**region, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == region["input_ids"].shape[1] + 4


def test_beam_search_keeps_each_rows_images_together(model, processor):
    """Row 0 holds two different images: beams must repeat them as a block (batched == one at a time)."""
    prompts = ["<image> then <image> A photo of", "<image> A photo of"]
    images = [[picture(0), picture(5)], [picture(1)]]
    batch = processor(text=prompts, images=images, padding_side="left")
    together = processor.decode_new_tokens(
        model.generate(**batch, max_new_tokens=4, num_beams=2, do_sample=False), batch["input_ids"].shape[1])
    for prompt, row_images, expected in zip(prompts, images, together):
        single = processor(text=prompt, images=row_images)
        alone = model.generate(**single, max_new_tokens=4, num_beams=2, do_sample=False)
        assert processor.decode_new_tokens(alone, single["input_ids"].shape[1]) == [expected]



class ForceImagesEvery(LogitsProcessor):
    """<|startofimage|> as the 3rd token after the prompt or after each image slot, `images` times; then EOS."""

    def __init__(self, soi: int, img: int, eos: int, prompt_length: int, images: int) -> None:
        self.soi, self.img, self.eos, self.prompt_length, self.images = soi, img, eos, prompt_length, images

    def __call__(self, input_ids, scores):
        row = input_ids[0].tolist()
        made = row[self.prompt_length:].count(self.soi)
        last_slot = max((i for i, t in enumerate(row) if t == self.img), default=-1)
        since = len(row) - 1 - max(last_slot, self.prompt_length - 1)
        forced = (self.soi if made < self.images else self.eos) if since == 2 else None
        return forced_scores(scores, forced, self.soi, self.eos)


@pytest.mark.parametrize("mmfs", [True, False], ids=["mmfs", "no-mmfs"])
def test_interleaved_generation_keeps_its_cache_and_matches_the_recompute_everything_way(processor, mmfs):
    """Two images in the document: without MMFS too, a continuing chunk splices only its own new image."""
    from test_mmfs import open_mmfs

    torch.manual_seed(0)
    model = open_mmfs(DeemForConditionalGeneration(DeemConfig.from_pretrained(TINY, mmfs=mmfs))).eval()
    inputs = processor(text="<image> A story:", images=[picture(3)])
    prompt = inputs["input_ids"].shape[1]

    def forcing():
        return LogitsProcessorList([ForceImagesEvery(processor.image_start_token_id, model.config.image_token_id,
                                                     processor.tokenizer.eos_token_id, prompt, images=2)])

    calls = []
    handle = model.vision_tower.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    parts = model.generate_interleaved(**inputs, max_new_tokens=200, max_images=2, num_inference_steps=2,
                                       do_sample=False, logits_processor=forcing(),
                                       generator=torch.Generator().manual_seed(0))
    handle.remove()
    assert [type(p).__name__ for p in parts] == ["Tensor", "Image", "Tensor", "Image", "Tensor"]
    assert calls == [1, 1, 1]  # the prompt's image, then each generated image: each encoded once

    # The same document the old way: every segment re-reads the whole document and re-encodes every image.
    ids, pixels, expected = inputs["input_ids"], inputs["pixel_values"], []
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                             max_new_tokens=200, do_sample=False, logits_processor=forcing(),
                             eos_token_id=[processor.image_start_token_id, processor.tokenizer.eos_token_id])
        expected.append(out[0, ids.shape[1]:-1])
        ids = out
        if int(out[0, -1]) != processor.image_start_token_id:
            break
        image = model.generate_images(ids, None, pixels, num_inference_steps=2, generator=generator,
                                      output_type="pt")
        expected.append(image)
        pixels = torch.cat([pixels, model.encoder_view(image)])
        ids = torch.cat([ids, ids.new_full((1, 77), model.config.image_token_id)], dim=1)
    for got, want in zip(parts, expected):
        if isinstance(got, torch.Tensor):
            assert torch.equal(got, want)
        else:
            got = torch.from_numpy(np.asarray(got)).permute(2, 0, 1).float() / 255
            assert (got - want[0]).abs().max() <= 1 / 255 + 1e-6  # the same image up to 8-bit rounding
