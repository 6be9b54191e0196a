"""MMFS: the deformable core against grid_sample, which images each token reads, where the layers sit, generation
with kept feature maps, the UNet side through diffusers' residual inputs."""

import pytest
import torch
import torch.nn.functional as F
from conftest import BOS, EOS, IMG, PAD, SOI, image_slot, make_batch
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from modeling_deem import DeemForConditionalGeneration
from modeling_deem.mmfs_attention import MultiScaleImageAttention
from modeling_deem.mmfs_language import DeemLanguageMMFS, ImageMemory, image_visibility
from modeling_deem.tiny import tiny_config


def open_mmfs(model: DeemForConditionalGeneration, seed: int = 0) -> DeemForConditionalGeneration:
    """Trained-looking MMFS: gates open and the UNet side's zero convolutions non-zero (both start closed)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".mmfs.gate"):
                parameter.fill_(1.0)
            elif name.startswith("decoder_mmfs.") and "zero_conv" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


def reference_attention(module: MultiScaleImageAttention, queries, features, shapes, visible, offset_base):
    """The same computation written out: per query, head, image, level and point a `grid_sample` of one value."""
    batch, num_queries, _ = queries.shape
    heads, levels, points = module.num_heads, module.num_levels, module.num_points
    num_images = visible.shape[-1]
    values = module.project_features(features)  # (K, S, H, d)
    query = module.image_query_proj(module.query_norm(queries))
    output = torch.zeros(batch, num_queries, values.shape[-2] * values.shape[-1])
    for b in range(batch):
        for q in range(num_queries):
            rank = visible[b, q].flip(0).long().cumsum(0).flip(0)
            logits, samples = [], []
            for k in range(num_images):
                qk = query[b, q] + module.recency_embedding.weight[max(int(rank[k]) - 1, 0)]
                offsets = module.sampling_offsets(qk).view(heads, points, 2)
                logit = module.attention_weights(qk).view(heads, levels, points + 1)
                logits.append(logit if visible[b, q, k] else torch.full_like(logit, -1e4))
                per_level, start = [], 0
                for h_l, w_l in shapes:
                    level_values = values[k, start:start + h_l * w_l].permute(1, 2, 0).reshape(heads, -1, h_l, w_l)
                    start += h_l * w_l
                    location = 0.5 + offsets / offset_base  # (H, P, 2) in [0, 1], x then y
                    grid = (2 * location - 1).view(heads, 1, points, 2)
                    per_level.append(F.grid_sample(level_values, grid, mode="bilinear", padding_mode="zeros",
                                                   align_corners=False)[:, :, 0])  # (H, d, P)
                samples.append(torch.stack(per_level, dim=2))  # (H, d, L, P)
            weights = torch.stack(logits, 1).flatten(1).softmax(-1).view(heads, num_images, levels, points + 1)
            value = torch.stack(samples, 2)  # (H, d, K, L, P)
            read = (value * weights[:, None, :, :, :points]).sum((2, 3, 4))  # (H, d)
            output[b, q] = read.flatten()
    return module.output_proj(output)


def test_deformable_core_matches_grid_sample():
    torch.manual_seed(0)
    module = MultiScaleImageAttention(query_dim=12, feature_dim=8, attention_dim=8, num_heads=2, num_levels=2,
                                      num_points=3, max_images=4, offset_init=3.0)
    module.reset_parameters()
    torch.nn.init.normal_(module.sampling_offsets.weight, std=0.5)  # offsets that depend on the query
    shapes = [(4, 5), (2, 3)]
    features = torch.randn(2, 4 * 5 + 2 * 3, 8)
    queries = torch.randn(1, 3, 12)
    visible = torch.tensor([[[False, False], [True, False], [True, True]]])
    values = module.project_features(features)[None]
    scale = torch.full((2,), 16.0)
    got = module(queries, values, shapes, visible, torch.full((3, 2), 0.5), scale)
    expected = reference_attention(module, queries, features, shapes, visible, 16.0)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_visibility_is_per_document_and_starts_at_the_slot():
    per_image = 2
    slot = [SOI, IMG, IMG]
    row = [BOS, 10] + slot + [11, EOS, BOS, 12] + slot + [13]
    other = [PAD] * 5 + [BOS] + slot + slot + [14]
    table, visible = image_visibility(torch.tensor([row, other]), len(row), IMG, per_image, BOS)
    assert table.tolist() == [[0, 1], [2, 3]]
    first, second = visible[0, :, 0], visible[0, :, 1]
    # Image 0 (placeholders at 3, 4): seen from its first placeholder to the end of its document (the EOS at 6).
    assert first.nonzero().flatten().tolist() == [3, 4, 5, 6]
    # Image 1 lives in the second document: its <soi> (9) does not see it, its placeholders and what follows do.
    assert second.nonzero().flatten().tolist() == [10, 11, 12]
    # Two images in a row: the later tokens see both.
    assert visible[1, -1].tolist() == [True, True] and visible[1, 9].tolist() == [True, False]
    # Only the last tokens (a cached decoding step): the same answer for them.
    _, last = image_visibility(torch.tensor([row, other]), 1, IMG, per_image, BOS)
    torch.testing.assert_close(last[:, 0], visible[:, -1])


def test_a_document_never_reads_another_documents_image():
    torch.manual_seed(0)
    config = tiny_config().mmfs_config
    mmfs = DeemLanguageMMFS(32, 32, config, eps=1e-6)
    mmfs.reset_parameters()
    with torch.no_grad():
        mmfs.gate.fill_(1.0)
    row = torch.tensor([[BOS, 10] + image_slot() + [11, EOS, BOS, 12] + image_slot() + [13]])
    table, visible = image_visibility(row, row.shape[1], IMG, 77, BOS)
    hidden = torch.randn(1, row.shape[1], 32)
    shapes = [(2, 2), (1, 1), (1, 1)]
    features = torch.randn(2, 6, 32)
    out = mmfs(hidden, ImageMemory(features, shapes, table, visible))
    changed = features.clone()
    changed[0] += 1.0  # the first document's image
    out_changed = mmfs(hidden, ImageMemory(changed, shapes, table, visible))
    second_document = slice(2 + 78 + 2, None)
    torch.testing.assert_close(out[:, second_document], out_changed[:, second_document])
    assert not torch.allclose(out[:, 2 + 1:2 + 78 + 2], out_changed[:, 2 + 1:2 + 78 + 2])
    # Tokens before any image are untouched, even with the gate open.
    torch.testing.assert_close(out[:, :3], hidden[:, :3])


def test_layers_sit_every_frequency_and_llama_weights_load_unchanged():
    model = DeemForConditionalGeneration(tiny_config(mmfs_config={"cross_attention_frequency": 2}))
    layers = model.language_model.model.layers
    assert hasattr(layers[0], "mmfs") and not hasattr(layers[1], "mmfs")
    assert isinstance(layers[0], LlamaDecoderLayer) and type(layers[1]) is LlamaDecoderLayer
    plain = AutoModelForCausalLM.from_config(model.config.text_config)
    missing, unexpected = model.language_model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".mmfs." in key for key in missing)
    # With the gate closed (init) the LLM computes exactly what the plain LLM computes.
    ids = torch.tensor([[BOS, 10, 11, 12, EOS]])
    torch.testing.assert_close(model.language_model(ids).logits, plain(ids).logits)


def test_text_before_the_first_image_is_unchanged_and_after_it_reads_the_image(interleaved_batch):
    torch.manual_seed(0)
    model = open_mmfs(DeemForConditionalGeneration(tiny_config())).eval()
    batch = {k: v for k, v in interleaved_batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}
    closed = DeemForConditionalGeneration(tiny_config()).eval()
    closed.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer in closed.language_model.model.layers[::2]:
            layer.mmfs.gate.zero_()
        opened, shut = model(**batch).logits, closed(**batch).logits
    second_row_text = slice(0, 6)  # [BOS, 20, 21, 22, 23, SOI]: no image yet
    torch.testing.assert_close(opened[1, second_row_text], shut[1, second_row_text])
    assert not torch.allclose(opened[1, -3:], shut[1, -3:])


def test_hidden_states_are_captured_for_every_layer(tiny_model, interleaved_batch):
    batch = {k: v for k, v in interleaved_batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}
    out = tiny_model(**batch, output_hidden_states=True)
    assert out.hidden_states is not None and len(out.hidden_states) == tiny_model.config.text_config.num_hidden_layers + 1


@pytest.mark.parametrize("mode", ["greedy", "beams"])
def test_cached_generation_equals_uncached_with_images(mode):
    torch.manual_seed(0)
    model = open_mmfs(DeemForConditionalGeneration(tiny_config())).eval()
    rows = [[BOS, 10] + image_slot() + [11, 12], [BOS] + image_slot() + [13] + image_slot() + [14]]
    batch = make_batch(rows, pad_left=True)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    options = {"max_new_tokens": 6, "do_sample": False, "eos_token_id": None}
    if mode == "beams":
        options.update(num_beams=2, num_return_sequences=2)
    cached = model.generate(**inputs, use_cache=True, **options)
    uncached = model.generate(**inputs, use_cache=False, **options)
    assert torch.equal(cached, uncached)
    # The images matter: other pixels, other continuation logits at the first step.
    first = model(**inputs).logits[:, -1]
    other = model(**dict(inputs, pixel_values=torch.randn_like(inputs["pixel_values"]))).logits[:, -1]
    assert not torch.allclose(first, other)


def test_feature_maps_are_projected_once_per_generation(monkeypatch):
    torch.manual_seed(0)
    model = open_mmfs(DeemForConditionalGeneration(tiny_config())).eval()
    batch = make_batch([[BOS, 10] + image_slot() + [11]])
    calls = []
    attention = model.language_model.model.layers[0].mmfs.attention
    original = attention.project_features
    monkeypatch.setattr(attention, "project_features", lambda f: calls.append(f.shape) or original(f))
    model.generate(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], max_new_tokens=5,
                   do_sample=False, eos_token_id=None)
    assert len(calls) == 1


def test_a_generated_image_is_seen_by_the_tokens_after_it():
    torch.manual_seed(0)
    model = open_mmfs(DeemForConditionalGeneration(tiny_config())).eval()
    ids = torch.tensor([[BOS, 10, 11] + image_slot() + [12]])
    pictures = [torch.randn(1, 3, 64, 64) for _ in range(2)]
    with torch.no_grad():
        logits = [model(input_ids=ids, pixel_values=p).logits[0, -1] for p in pictures]
    assert not torch.allclose(*logits)


def test_generic_decoder_layers_get_mmfs_after_the_layer():
    text = {"model_type": "gpt_neox", "vocab_size": 512, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 1024, "bos_token_id": 1,
            "eos_token_id": 2, "pad_token_id": 3, "tie_word_embeddings": False, "rotary_pct": 1.0}
    torch.manual_seed(0)
    model = open_mmfs(DeemForConditionalGeneration(tiny_config(text_config=text))).eval()
    assert hasattr(model.language_model.gpt_neox.layers[0], "mmfs")
    ids = torch.tensor([[BOS, 10] + image_slot() + [11, 12]])
    pictures = [torch.randn(1, 3, 64, 64) for _ in range(2)]
    with torch.no_grad():
        logits = [model(input_ids=ids, pixel_values=p).logits[0, -1] for p in pictures]
    assert not torch.allclose(*logits)


def test_unet_side_starts_as_identity_and_reads_the_image(tiny_model):
    torch.manual_seed(0)
    features = tiny_model.get_image_features(torch.randn(2, 3, 64, 64))
    latents = torch.randn(2, 4, 4, 4)
    timesteps = torch.tensor([300, 600])
    condition = features.condition_embeds

    def denoise(image_indices):
        context = tiny_model.decoder_image_context(features, torch.tensor(image_indices))
        kwargs = tiny_model.decoder_mmfs.unet_kwargs(context)
        return tiny_model.unet(latents, timesteps, encoder_hidden_states=condition, **kwargs).sample

    plain = tiny_model.unet(latents, timesteps, encoder_hidden_states=condition).sample
    torch.testing.assert_close(denoise([0, 1]), plain)  # zero-initialised convolutions
    open_mmfs(tiny_model)
    own, swapped, none = denoise([0, 1]), denoise([1, 0]), denoise([-1, -1])
    assert not torch.allclose(own, plain) and not torch.allclose(own, swapped)
    torch.testing.assert_close(none, plain)  # a sample without an image gets no residual


def test_csr_trains_the_unet_side_and_reaches_the_encoder(interleaved_batch):
    torch.manual_seed(0)
    model = open_mmfs(DeemForConditionalGeneration(tiny_config())).train()
    model(**interleaved_batch).csr_loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("decoder_mmfs.")}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "value_proj" in n)
    assert model.vision_tower.adapters["0"].weight.grad.abs().sum() > 0  # level 0 is read only by the UNet side
    assert all(p.grad is None for p in model.unet.parameters())


def test_nip_reads_the_image_before_in_the_same_document(tiny_model):
    rows = [[BOS, 10] + image_slot() + [11] + image_slot() + [12, EOS, BOS, 13] + image_slot(),
            [BOS] + image_slot() + [14]]
    previous = tiny_model.previous_images(make_batch(rows)["input_ids"])
    assert previous.tolist() == [-1, 0, -1, -1]


def test_reconstruction_and_generation_go_through_the_pipeline_with_mmfs(processor):
    torch.manual_seed(0)
    model = open_mmfs(DeemForConditionalGeneration(tiny_config())).eval()
    pixels = torch.randn(1, 3, 64, 64)
    options = {"num_inference_steps": 2, "output_type": "pt"}
    first = model.reconstruct_images(pixels, generator=torch.Generator().manual_seed(0), **options)
    with torch.no_grad():
        for block in model.decoder_mmfs.modules():
            if isinstance(block, torch.nn.Conv2d):
                block.weight.zero_()
                block.bias.zero_()
    closed = model.reconstruct_images(pixels, generator=torch.Generator().manual_seed(0), **options)
    assert first.shape == closed.shape == (1, 3, 32, 32) and not torch.allclose(first, closed)
    # Generation after an image in the prompt: the UNet's MMFS reads that image.
    ids = torch.tensor([[BOS, 10] + image_slot() + [11, SOI]])
    _, context = model._prompt_state(ids, pixel_values=pixels)
    assert context is not None and context.has_image.tolist() == [True]
    _, no_image = model._prompt_state(torch.tensor([[BOS, 10, 11, SOI]]))
    assert no_image is None
    images = model.generate(input_ids=ids, pixel_values=pixels, generation_mode="image", **options)
    assert images.shape == (1, 3, 32, 32)


def test_mmfs_switch_and_bad_configs():
    plain = DeemForConditionalGeneration(tiny_config(mmfs=False))
    assert not any(".mmfs." in n or n.startswith("decoder_mmfs.") for n, _ in plain.named_parameters())
    with pytest.raises(ValueError, match="mmfs reads the ConvNeXt"):
        tiny_config(vision_backbone="diffusion", mmfs=True)
    with pytest.raises(ValueError, match="Unknown mmfs_config keys"):
        tiny_config(mmfs_config={"frequency": 2})
    with pytest.raises(ValueError, match="at most 8 images"):
        model = DeemForConditionalGeneration(tiny_config())
        ids = torch.tensor([[BOS] + image_slot() * 9])
        model(input_ids=ids, pixel_values=torch.randn(9, 3, 64, 64))


def test_visual_resampler_normalises_queries_and_keys(tiny_model):
    from modeling_deem.resampler_deem import QKNormQFormerAttention

    visual = [m for m in tiny_model.visual_resampler.modules() if isinstance(m, QKNormQFormerAttention)]
    layers = tiny_model.config.resampler_config.num_hidden_layers
    assert len(visual) == 2 * layers  # self- and cross-attention (cross-attention in every layer of the tiny one)
    assert not any(isinstance(m, QKNormQFormerAttention) for m in tiny_model.condition_resampler.modules())
    tokens = torch.randn(2, 10, 32)
    before = tiny_model.visual_resampler(tokens)
    with torch.no_grad():
        visual[0].query_norm.weight.mul_(3.0)
    assert not torch.allclose(before, tiny_model.visual_resampler(tokens))
