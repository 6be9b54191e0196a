"""DeemProcessor: slot expansion, one crop/flip for both views and the mask, chat template, presets, errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from processing import DeemImageProcessor, DeemProcessor

ROOT = Path(__file__).resolve().parents[1]


def two_colour_image(width: int = 120, height: int = 90) -> Image.Image:
    """Left half red, right half blue: any mirroring shows."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2, 0] = 255
    array[:, width // 2 :, 2] = 255
    return Image.fromarray(array)


def test_each_image_becomes_a_start_token_and_77_placeholders(processor):
    out = processor(text=["Look: <image> and <image>.", "Only text."], images=[[two_colour_image()] * 2, []],
                    padding_side="left")
    ids, mask = out["input_ids"], out["attention_mask"]
    assert int((ids[0] == processor.image_start_token_id).sum()) == 2
    assert int((ids[0] == processor.image_token_id).sum()) == 2 * 77
    assert int((ids[1] == processor.image_token_id).sum()) == 0
    assert out["pixel_values"].shape == (2, 3, 64, 64)
    assert mask[1, 0] == 0 and mask[1, -1] == 1  # left padding for generation
    first = int(mask[0].nonzero()[0])
    assert ids[0, first] == processor.tokenizer.bos_token_id
    start = (ids[0] == processor.image_start_token_id).nonzero()[0, 0]
    assert (ids[0, start + 1 : start + 78] == processor.image_token_id).all()


def _unnormalise(view: torch.Tensor, image_processor: DeemImageProcessor) -> torch.Tensor:
    mean = torch.tensor(image_processor.image_mean)[:, None, None]
    std = torch.tensor(image_processor.image_std)[:, None, None]
    return view * std + mean


@pytest.mark.parametrize("seed", range(6))
def test_encoder_and_decoder_views_share_crop_and_flip(processor, seed):
    mask = np.zeros((90, 120), dtype=np.uint8)
    mask[:, :60] = 1  # the red half
    out = processor(text="<image>", images=two_colour_image(), image_masks=[mask], return_decoder_views=True,
                    train=True, seed=seed)
    encoder = _unnormalise(out["pixel_values"][0], processor.image_processor)
    decoder = (out["decoder_pixel_values"][0] + 1) / 2
    region = out["image_masks"][0]
    assert out["decoder_pixel_values"].shape == (1, 3, 32, 32)
    red_on_left = lambda v: v[0, :, : v.shape[-1] // 4].mean() > v[2, :, : v.shape[-1] // 4].mean()  # noqa: E731
    assert red_on_left(encoder) == red_on_left(decoder)
    mask_on_left = region[:, :16].mean() > region[:, -16:].mean()
    assert bool(mask_on_left) == bool(red_on_left(encoder))


def test_training_flips_sometimes(processor):
    flips = set()
    for seed in range(12):
        view = processor(text="<image>", images=two_colour_image(), train=True, seed=seed)["pixel_values"][0]
        flips.add(bool(view[0, :, :8].mean() > view[0, :, -8:].mean()))
    assert flips == {True, False}


def test_image_modes_are_converted(processor):
    rgba = two_colour_image().convert("RGBA")
    grey = two_colour_image().convert("L")
    out = processor(text="<image><image>", images=[rgba, grey])
    assert out["pixel_values"].shape == (2, 3, 64, 64)


def test_slot_count_mismatch_is_refused(processor):
    with pytest.raises(ValueError, match=r"2 image slots .* but 1 images"):
        processor(text="<image> and <image>", images=[two_colour_image()])
    with pytest.raises(ValueError, match=r"0 image slots .* but 1 images"):
        processor(text="no slot", images=[two_colour_image()])


def test_per_text_image_lists_must_match_each_texts_slots(processor):
    """Nested lists give each text its images: a list that contradicts a text's slots is refused, never moved."""
    texts = ["One <image>.", "Two <image> and <image>."]
    a, b, c = (two_colour_image(40 + 10 * i, 30) for i in range(3))
    nested = processor(text=texts, images=[[a], [b, c]])
    flat = processor(text=texts, images=[a, b, c])
    torch.testing.assert_close(nested["pixel_values"], flat["pixel_values"])
    assert torch.equal(nested["input_ids"], flat["input_ids"])
    with pytest.raises(ValueError, match=r"Text 0 has 1 image slots \('<image>'\) but 2 images were given for it"):
        processor(text=texts, images=[[a, b], [c]])
    with pytest.raises(ValueError, match=r"Got 1 lists of images for 2 texts"):
        processor(text=texts, images=[[a, b, c]])
    with pytest.raises(ValueError, match=r"mix lists and single items"):
        processor(text=texts, images=[[a], b, c])
    with pytest.raises(ValueError, match=r"Text 1 has 2 image slots .* but 1 image masks were given for it"):
        processor(text=texts, images=[[a], [b, c]], image_masks=[[None], [None]])
    with pytest.raises(ValueError, match=r"nest images one level deep at most"):
        processor(text=texts, images=[[a], [[b], c]])


def test_mask_size_must_match_its_image(processor):
    with pytest.raises(ValueError, match=r"mask of image 0 has size \(10, 10\) but the image is \(90, 120\)"):
        processor(text="<image>", images=[two_colour_image()], image_masks=[np.ones((10, 10))])


def test_empty_batch_is_refused(processor):
    with pytest.raises(ValueError, match="Empty batch"):
        processor(text=[])


def test_chat_template_and_presets(processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "You are a helpful assistant.\n## USER: <image>What is it?\n## ASSISTANT:"
    vqa = processor.prompt("vqa", question="What colour?")
    assert "Based on the image, please answer the question. <image>What colour? Please provide an accurate " \
           "answer within one word.\n## ASSISTANT: The answer is" in vqa
    assert processor.prompt("pope", object="cat").endswith(
        "## USER: Based on the image, please answer the question. <image> Is there a cat in the image? Please answer "
        "yes or no.\n## ASSISTANT: The answer is")  # paper Figure 8 (d)
    assert "Is dog the main object in this image?" in processor.prompt("robustvqa", object="dog")
    assert processor.prompt("caption").endswith("## ASSISTANT: A photo of")
    with pytest.raises(ValueError, match="Unknown prompt preset 'nope'"):
        processor.prompt("nope")
    with pytest.raises(ValueError, match="needs the field 'question'"):
        processor.prompt("vqa")


def test_chat_template_tokenizes_with_images(processor):
    messages = [{"role": "user", "content": [{"type": "image", "image": two_colour_image()},
                                             {"type": "text", "text": "What is it?"}]}]
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 64, 64)
    assert int((out["input_ids"] == processor.image_token_id).sum()) == 77


def test_save_and_reload(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = DeemProcessor.from_pretrained(tmp_path)
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    assert loaded.chat_template == processor.chat_template
    for name in ("processing_deem.py", "image_processing_deem.py", "image_inputs_deem.py", "prompts_deem.py"):
        assert (tmp_path / name).exists(), name  # remote code carries its sibling modules


def test_deem_7b_processor_points_at_vicuna_and_extends_its_tokenizer(tmp_path):
    """The 7B processor config names Vicuna's tokenizer; a local stand-in gets the same three new ids."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from modeling_deem import DeemConfig

    config = json.loads((ROOT / "hub_configs" / "deem-7b" / "processor_config.json").read_text())
    assert config["base_tokenizer"] == "lmsys/vicuna-7b-v1.5"
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(31997)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    stand_in = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                       unk_token="<unk>")
    stand_in.save_pretrained(tmp_path / "vicuna-like")
    processor = DeemProcessor.from_hub_config(ROOT / "hub_configs" / "deem-7b", tokenizer=tmp_path / "vicuna-like")
    big = DeemConfig()
    assert (processor.image_start_token_id, processor.image_token_id) == (big.image_start_token_id,
                                                                          big.image_token_id)
    assert processor.tokenizer.pad_token_id == big.pad_token_id == 32002
    assert len(processor.tokenizer) == big.text_config.vocab_size
    assert processor.image_processor.size == 256 and processor.image_processor.decoder_size == 512


def test_pil_masks_are_accepted(processor):
    mask = Image.new("L", (120, 90), 0)
    mask.paste(255, (0, 0, 60, 90))
    out = processor(text="<image>", images=two_colour_image(), image_masks=[mask])
    assert out["image_masks"][0, :, :16].mean() > 0.9 and out["image_masks"][0, :, -16:].mean() < 0.1
