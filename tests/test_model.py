"""Forward pass, the three losses, the image-slot rules and which parts the gradients reach."""

import pytest
import torch
from conftest import BOS, EOS, IMG, NUM_IMAGE_TOKENS, SOI, image_slot, make_batch


def test_forward_shapes_and_losses(tiny_model, interleaved_batch):
    tiny_model.train()
    out = tiny_model(**interleaved_batch)
    batch, length = interleaved_batch["input_ids"].shape
    assert out.logits.shape == (batch, length, tiny_model.config.text_config.vocab_size)
    for part in (out.ntp_loss, out.nip_loss, out.csr_loss):
        assert part is not None and part.ndim == 0 and torch.isfinite(part)
    expected = out.ntp_loss + 5.0 * out.nip_loss + 5.0 * out.csr_loss
    torch.testing.assert_close(out.loss, expected)
    assert out.image_hidden_states.shape == (3, NUM_IMAGE_TOKENS, tiny_model.config.text_config.hidden_size)


def test_image_features(tiny_model):
    features = tiny_model.get_image_features(torch.randn(2, 3, 64, 64))
    assert features.image_embeds.shape == (2, 77, 32)
    assert features.condition_embeds.shape == (2, 77, tiny_model.config.cross_attention_dim)


def test_text_only_forward_has_only_ntp(tiny_model):
    ids = torch.tensor([[BOS, 10, 11, 12, EOS]])
    out = tiny_model(input_ids=ids, labels=ids)
    assert out.ntp_loss is not None and out.nip_loss is None and out.csr_loss is None
    torch.testing.assert_close(out.loss, out.ntp_loss)


def test_placeholders_are_never_targets(tiny_model, interleaved_batch):
    """Changing the labels at image placeholders must not change the NTP loss."""
    batch = {k: v for k, v in interleaved_batch.items() if k != "decoder_pixel_values"}
    torch.manual_seed(0)
    first = tiny_model(**batch).ntp_loss
    labels = batch["labels"].clone()
    labels[batch["input_ids"] == IMG] = 7
    torch.manual_seed(0)
    second = tiny_model(**{**batch, "labels": labels}).ntp_loss
    torch.testing.assert_close(first, second)


def test_image_count_mismatch_names_both_numbers(tiny_model, interleaved_batch):
    batch = dict(interleaved_batch, pixel_values=interleaved_batch["pixel_values"][:2])
    with pytest.raises(ValueError, match=r"Got 2 images but the text has 3 image slots"):
        tiny_model(**batch)


def test_slots_without_images_are_refused(tiny_model, interleaved_batch):
    batch = {k: v for k, v in interleaved_batch.items() if k not in ("pixel_values", "decoder_pixel_values")}
    with pytest.raises(ValueError, match="3 image slots but no pixel_values"):
        tiny_model(**batch)


def test_wrong_pixel_shape_is_refused(tiny_model, interleaved_batch):
    with pytest.raises(ValueError, match=r"pixel_values must be \(num_images, 3, height, width\)"):
        tiny_model(**dict(interleaved_batch, pixel_values=torch.randn(3, 64, 64)))
    with pytest.raises(ValueError, match="decoder_pixel_values must be"):
        tiny_model(**dict(interleaved_batch, decoder_pixel_values=torch.randn(2, 3, 32, 32)))


def test_first_image_of_a_document_has_no_nip_target(tiny_model):
    contexts_of = lambda rows: tiny_model.image_contexts(  # noqa: E731
        torch.zeros(len(rows), max(map(len, rows)), 32), make_batch(rows)["input_ids"], None
    )
    # Leading image: no target. Image after text: a context of <s> + 2 tokens + <soi>, reversed.
    _, lengths, kept = contexts_of([[BOS] + image_slot() + [10, 11] + image_slot() + [EOS]])
    assert kept.tolist() == [1]
    assert lengths.tolist() == [1 + 1 + 77 + 2 + 1]
    # A packed row: the second document starts at its own <s>, so its leading image has no target either.
    _, _, kept = contexts_of([[BOS, 10, 11] + image_slot() + [EOS, BOS] + image_slot() + [EOS]])
    assert kept.tolist() == [0]
    # No image qualifies: NIP is absent rather than a fake zero.
    batch = make_batch([[BOS] + image_slot() + [10, EOS]])
    assert tiny_model(**batch).nip_loss is None


def test_nip_context_is_reversed_and_bounded_by_the_document(tiny_model):
    hidden = torch.arange(12, dtype=torch.float32)[None, :, None].expand(1, 12, 32)
    rows = [[7, 8, BOS, 10, 11, SOI] + [IMG] * 77]
    input_ids = make_batch(rows)["input_ids"]
    hidden = torch.arange(input_ids.shape[1], dtype=torch.float32)[None, :, None].expand(1, -1, 32)
    states, lengths, kept = tiny_model.image_contexts(hidden, input_ids, None)
    assert kept.tolist() == [0] and lengths.tolist() == [4]
    assert states[0, :, 0].tolist() == [5.0, 4.0, 3.0, 2.0]  # <soi> first, back to the document's <s>


def test_slot_without_start_token_is_refused(tiny_model):
    batch = make_batch([[BOS, 10] + [IMG] * 77 + [EOS]])
    with pytest.raises(ValueError, match="not preceded by <\\|startofimage\\|>"):
        tiny_model(**batch)


def test_vae_encodes_each_image_once(tiny_model, interleaved_batch):
    calls = []
    hook = tiny_model.vae.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    tiny_model(**interleaved_batch)
    hook.remove()
    assert calls == [3]


def _grad_norms(model, names):
    return {n: sum(float(p.grad.abs().sum()) for p in getattr(model, n).parameters() if p.grad is not None)
            for n in names}


def test_csr_alone_trains_encoder_and_resampler_not_unet(tiny_model, interleaved_batch):
    tiny_model.config.nip_loss_weight = 0.0
    tiny_model.train()
    out = tiny_model(**{k: v for k, v in interleaved_batch.items() if k != "labels"})
    assert out.nip_loss is None and out.ntp_loss is None
    out.csr_loss.backward()
    norms = _grad_norms(tiny_model, ["vision_tower", "visual_resampler", "image_to_condition"])
    assert all(v > 0 for v in norms.values()), norms
    for frozen in ("unet", "vae"):
        assert all(p.grad is None and not p.requires_grad for p in getattr(tiny_model, frozen).parameters())
    # CSR does not touch the LLM or the NIP path.
    assert all(p.grad is None for p in tiny_model.language_model.parameters())
    assert all(p.grad is None for p in tiny_model.condition_resampler.parameters())


def test_nip_trains_the_condition_path(tiny_model, interleaved_batch):
    tiny_model.config.csr_loss_weight = 0.0
    tiny_model.config.condition_dropout_prob = 0.0
    out = tiny_model(**interleaved_batch)
    out.nip_loss.backward()
    norms = _grad_norms(tiny_model, ["condition_resampler", "context_proj", "vision_tower"])
    assert all(v > 0 for v in norms.values()), norms


def test_condition_dropout_uses_the_learned_negative(tiny_model, interleaved_batch):
    tiny_model.config.csr_loss_weight = 0.0
    tiny_model.config.condition_dropout_prob = 0.999
    tiny_model.train()
    tiny_model(**interleaved_batch).nip_loss.backward()
    assert tiny_model.negative_condition.weight.grad is not None and tiny_model.negative_condition.weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in tiny_model.condition_resampler.parameters())


def test_region_mask_restricts_csr(tiny_model):
    """With a region mask, the CSR error is the mean over the region's latent positions only."""
    from modeling_deem.diffusion_deem import denoising_loss

    unet, scheduler = tiny_model.unet, tiny_model.noise_scheduler
    latents, condition, t = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 32), torch.tensor([500])
    mask = torch.zeros(1, 64, 64)
    mask[:, :32] = 1  # top half of the image = top 8 latent rows
    torch.manual_seed(3)
    masked = denoising_loss(unet, scheduler, latents, condition, t, mask)
    torch.manual_seed(3)
    noise = torch.randn_like(latents)
    prediction = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=condition).sample
    error = ((prediction - noise) ** 2).mean(1)
    torch.testing.assert_close(masked, error[:, :8].mean().reshape(1))
    assert not torch.allclose(masked, error.mean().reshape(1))


def test_frozen_parts_stay_in_eval_mode(tiny_model):
    tiny_model.train()
    assert tiny_model.language_model.training and tiny_model.vision_tower.training
    assert not tiny_model.unet.training and not tiny_model.vae.training


def test_native_initialisation_is_kept(tiny_model):
    """post_init must not overwrite diffusers' / timm's own init with normal(0, 0.02)."""
    conv = tiny_model.unet.conv_in
    bound = 1 / (conv.in_channels * 9) ** 0.5
    assert conv.weight.abs().max() <= bound + 1e-6
    assert conv.weight.std() > 0.05  # kaiming-uniform on 36 inputs: std ≈ 0.096, not 0.02
    assert tiny_model.visual_resampler.queries.std() < 0.05


def test_the_vae_does_not_run_when_nothing_is_denoised(tiny_model):
    from unittest import mock

    from conftest import BOS, EOS, image_slot

    import modeling_deem.diffusion_losses_deem as losses

    tiny_model.train()
    tiny_model.config.csr_loss_weight = 0.0
    batch = make_batch([[BOS] + image_slot() + [10, EOS]])  # its only image opens the document: no NIP context
    with mock.patch.object(losses, "encode_latents", wraps=losses.encode_latents) as encode:
        out = tiny_model(**batch)
        assert encode.call_count == 0 and out.nip_loss is None and out.csr_loss is None
        tiny_model(**make_batch([[BOS, 10] + image_slot() + [EOS]]))  # now an image has a context
        assert encode.call_count == 1


def test_nip_and_csr_share_one_unet_call_with_the_losses_of_two(tiny_model, interleaved_batch):
    from test_mmfs import open_mmfs

    model = open_mmfs(tiny_model).train()
    batch = {**interleaved_batch, "image_masks": torch.rand(3, 64, 64).round()}  # CSR on regions, NIP on images
    calls = []
    handle = model.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    results = {}
    for fused in (True, False):
        model.config.fuse_diffusion_losses = fused
        calls.clear()
        torch.manual_seed(0)
        out = model(**batch)
        results[fused] = (out.nip_loss, out.csr_loss)
        assert calls == ([3 + 2] if fused else [3, 2])  # 3 images for CSR, 2 with a NIP context
    handle.remove()
    for fused_loss, separate_loss in zip(results[True], results[False]):
        torch.testing.assert_close(fused_loss, separate_loss, rtol=1e-5, atol=1e-6)


def test_a_convnext_state_missing_weights_is_refused_before_anything_loads(tiny_model):
    trunk = tiny_model.vision_tower.trunk
    state = {key: torch.zeros_like(value) for key, value in trunk.state_dict().items()}
    before = {key: value.clone() for key, value in trunk.state_dict().items()}
    del state["stem.0.weight"]
    with pytest.raises(ValueError, match="lack \\['stem.0.weight'\\]"):
        tiny_model.vision_tower.load_trunk_state(state)
    assert all(torch.equal(value, before[key]) for key, value in trunk.state_dict().items())
