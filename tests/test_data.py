"""Row builders for the paper's data kinds, mask decoding, packing without cross-sample attention, streaming."""

import random

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

from modeling_deem import DeemConfig, DeemForConditionalGeneration
from trainers import STAGES, DeemDataCollator, DeemTrainer, make_shapes_dataset
from trainers.data_builders import (
    decode_mask,
    image_text_pair_row,
    interleaved_document_row,
    llava_conversation_row,
    region_instruction_row,
)
from trainers.packing import DeemPackingCollator


def image(value: int) -> Image.Image:
    return Image.new("RGB", (40, 30), (value, 0, 0))


def test_interleaved_documents_follow_the_mmc4_rules():
    texts = ["One.", "Two.", "Three."]
    info = [{"image": image(i), "matched_text_index": i % 3, "matched_sim": sim}
            for i, sim in enumerate([0.3, 0.1, 0.5, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3])]
    sides = set()
    for seed in range(20):
        row = interleaved_document_row(texts, info, random.Random(seed))
        assert len(row["images"]) == 6  # 9 images, one below 0.24 dropped, at most 6 kept
        assert image(1) not in row["images"]
        assert row["text"].count("<image>") == 6
        sides.add(row["text"].startswith("<image>"))
    assert sides == {True, False}  # before or after its sentence, both happen
    with pytest.raises(ValueError, match="outside the document's 3 sentences"):
        interleaved_document_row(texts, [{"image": image(0), "matched_text_index": 7}], random.Random(0))
    with pytest.raises(ValueError, match="has no image"):
        interleaved_document_row(texts, [{"matched_text_index": 0}], random.Random(0))


def test_pairs_conversations_and_regions():
    orders = {image_text_pair_row(image(0), "A cat.", random.Random(s))["text"] for s in range(10)}
    assert orders == {"<image> A cat.", "A cat. <image>"}
    with pytest.raises(ValueError, match="Empty caption"):
        image_text_pair_row(image(0), "  ", random.Random(0))
    row = llava_conversation_row([{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Red."}],
                                 image(0))
    assert row["messages"] == [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "Red."}]
    with pytest.raises(ValueError, match="1 '<image>' markers but 0 images"):
        llava_conversation_row([{"from": "human", "value": "<image>\nWhat?"}])
    region = region_instruction_row(image(0), [0, 0, 20, 0, 20, 10, 0, 10], "Describe", "a corner")
    assert region["images"] == [image(0), image(0)] and region["masks"][0] is None
    assert region["masks"][1].shape == (30, 40) and region["masks"][1][5, 10] == 1 and region["masks"][1][20, 30] == 0


def test_mask_decoding_agrees_across_formats():
    binary = np.zeros((4, 5), dtype=np.uint8)
    binary[1:3, 1:4] = 1
    column_major = binary.T.flatten()
    runs, value, count = [], 0, 0
    for pixel in column_major:
        if pixel != value:
            runs.append(count)
            value, count = pixel, 0
        count += 1
    runs.append(count)
    assert np.array_equal(decode_mask({"size": [4, 5], "counts": runs}, 4, 5), binary)
    # COCO's compressed string for the same mask (runs 5,2,2,2,2,2,5 → deltas after the second count).
    assert _encode_rle_string(runs) and np.array_equal(
        decode_mask({"size": [4, 5], "counts": _encode_rle_string(runs)}, 4, 5), binary)
    assert np.array_equal(decode_mask(binary * 255, 4, 5), binary)
    with pytest.raises(ValueError, match="RLE size"):
        decode_mask({"size": [5, 5], "counts": runs}, 4, 5)
    with pytest.raises(ValueError, match="does not match the image"):
        decode_mask(np.ones((3, 3)), 4, 5)


def _encode_rle_string(counts):
    """Reference encoder, written from COCO's maskApi description, to check the decoder."""
    out = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def test_packed_samples_compute_what_they_compute_alone(processor):
    torch.manual_seed(0)
    model = DeemForConditionalGeneration(DeemConfig.from_pretrained(TINY)).eval()
    rows = [make_shapes_dataset(4, seed=1)[i] for i in range(3)]
    collator = DeemDataCollator(processor, train_augment=False)
    lengths = [int(collator([row])["attention_mask"].sum()) for row in rows]
    packed = DeemPackingCollator(collator, max_length=lengths[0] + lengths[1] + 2)(rows)
    assert packed["input_ids"].shape[0] == 2  # [rows 0 and 1] + [row 2]
    assert packed["attention_mask"].shape == (2, 1, packed["input_ids"].shape[1], packed["input_ids"].shape[1])
    with torch.no_grad():
        packed_logits = model(**{k: v for k, v in packed.items() if k not in ("labels", "decoder_pixel_values")}).logits
        alone = collator([rows[1]])
        alone_logits = model(input_ids=alone["input_ids"], attention_mask=alone["attention_mask"],
                             pixel_values=alone["pixel_values"], image_masks=alone["image_masks"]).logits
    start = lengths[0]
    torch.testing.assert_close(packed_logits[0, start : start + lengths[1]], alone_logits[0], atol=1e-5, rtol=1e-4)
    assert packed["labels"][0, start] == -100
    _, _, kept = model.image_contexts(torch.zeros(2, packed["input_ids"].shape[1], 32), packed["input_ids"],
                                          packed["attention_mask"])
    starts_with_image = ["<image>" in row["text"][:7] for row in rows]
    assert len(kept) == starts_with_image.count(False)  # the first-image rule per sample
    assert int(packed["position_ids"][0, start]) == 0
    with pytest.raises(ValueError, match="more than max_length=50"):
        DeemPackingCollator(collator, max_length=50)(rows)


def test_packed_and_streaming_training(processor, tmp_path):
    torch.manual_seed(0)
    model = DeemForConditionalGeneration(DeemConfig.from_pretrained(TINY))
    stream = make_shapes_dataset(16, seed=2).to_iterable_dataset()
    args = STAGES["stage1"].training_arguments(str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                                               use_cpu=True, report_to="none", save_strategy="no",
                                               logging_steps=1, warmup_steps=0)
    trainer = DeemTrainer(model=model, args=args, train_dataset=stream, stage="stage1",
                          data_collator=DeemPackingCollator(DeemDataCollator(processor), max_length=400))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "csr_loss" in entry]
    assert len(logs) == 2 and all(np.isfinite(entry["loss"]) for entry in logs)


def test_packed_documents_without_bos_are_bounded_by_the_packing():
    """A tokenizer that adds no BOS: the packing's restarting positions alone keep documents apart, for MMFS
    (what each token sees), NIP's context and NIP's previous image."""
    from conftest import EOS, PAD, image_slot
    from test_mmfs import open_mmfs

    torch.manual_seed(0)
    model = open_mmfs(DeemForConditionalGeneration(DeemConfig.from_pretrained(TINY)).eval())
    first = [10, 11] + image_slot() + [12, EOS]
    second = [20, 21] + image_slot() + [22, 23] + image_slot() + [24, EOS]
    ids = torch.tensor([first + second])
    length = ids.shape[1]
    positions = torch.tensor([list(range(len(first))) + list(range(len(second)))])
    mask = torch.zeros(1, 1, length, length, dtype=torch.bool)
    for start, size in ((0, len(first)), (len(first), len(second))):
        mask[0, 0, start : start + size, start : start + size] = torch.tril(torch.ones(size, size, dtype=torch.bool))
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        packed = model(input_ids=ids, attention_mask=mask, position_ids=positions, pixel_values=pixels).logits
        alone = model(input_ids=torch.tensor([second]), attention_mask=torch.ones(1, len(second), dtype=torch.long),
                      pixel_values=pixels[1:]).logits
    torch.testing.assert_close(packed[0, len(first):], alone[0], atol=1e-5, rtol=1e-4)

    hidden = torch.arange(length, dtype=torch.float)[None, :, None].expand(1, length, 32)
    states, lengths, kept = model.image_contexts(hidden, ids, mask, positions)
    assert kept.tolist() == [0, 1, 2]
    assert int(states[1, lengths[1] - 1, 0]) == len(first)  # the second document's first image reads from its own start
    assert model.previous_images(ids, positions).tolist() == [-1, -1, 1]
    assert PAD not in first + second
