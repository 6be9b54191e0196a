"""The tokens DEEM adds learn while the LLM is frozen (stage I), and NTP's targets follow the original."""

import torch
from conftest import BOS, EOS, IMG, SOI, image_slot, make_batch

from modeling_deem import DeemForConditionalGeneration
from modeling_deem.tiny import tiny_config
from trainers.stages import apply_stage


def caption_then_image() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    batch = make_batch([[BOS, 10, 11, 12, 13] + image_slot() + [EOS]] * 2)
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels")}


def soi_probability(model, batch) -> float:
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return float(logits[:, 4].softmax(-1)[:, SOI].mean())  # after the caption's last token


def test_stage_one_gives_startofimage_a_gradient_and_learns_when_to_start_an_image():
    torch.manual_seed(0)
    model = DeemForConditionalGeneration(tiny_config())
    apply_stage(model, "stage1")
    assert not any(p.requires_grad for n, p in model.language_model.named_parameters() if ".mmfs." not in n)
    assert model.image_start_embedding.weight.requires_grad and model.new_token_head.weight.requires_grad
    batch = caption_then_image()
    model.train()
    model(**batch).ntp_loss.backward()
    assert model.image_start_embedding.weight.grad.abs().sum() > 0
    assert model.new_token_head.weight.grad.abs().sum() > 0
    assert model.get_input_embeddings().weight.grad is None  # the LLM itself stays frozen

    before = soi_probability(model.eval(), batch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    for _ in range(8):
        optimizer.zero_grad()
        model(**batch).ntp_loss.backward()
        optimizer.step()
    after = soi_probability(model.eval(), batch)
    assert after > 2 * before, (before, after)


def test_ntp_ignores_bos_targets_and_an_image_that_opens_a_document(tiny_model):
    ids = torch.tensor([[BOS] + image_slot() + [10, 11] + image_slot() + [EOS, BOS, 12, EOS]])
    labels = tiny_model.ntp_labels(ids.clone(), ids)
    assert (labels[ids == BOS] == -100).all() and (labels[ids == IMG] == -100).all()
    soi_positions = (ids[0] == SOI).nonzero().flatten().tolist()
    assert labels[0, soi_positions[0]] == -100  # straight after <s>
    assert labels[0, soi_positions[1]] == SOI  # after text: the model must learn to start it
    assert labels[0, -1] == EOS and labels[0, -2] == 12
