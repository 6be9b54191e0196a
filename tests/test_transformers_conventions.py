"""What transformers users expect of any model: config-driven outputs, tuples on request, strict loading."""

import pytest
import torch
from conftest import BOS, EOS, image_slot, make_batch

from modeling_deem import DeemForConditionalGeneration


@pytest.fixture
def saved(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    return tmp_path


def batch():
    torch.manual_seed(0)
    data = make_batch([[BOS, 10] + image_slot() + [11, EOS]])
    data.pop("decoder_pixel_values")
    return data


def test_output_attentions_and_hidden_states_set_on_the_config_are_returned(saved):
    model = DeemForConditionalGeneration.from_pretrained(saved, output_attentions=True, output_hidden_states=True,
                                                         attn_implementation="eager")
    out = model(**batch())
    layers = model.config.text_config.num_hidden_layers
    assert out.hidden_states is not None and len(out.hidden_states) == layers + 1
    assert out.attentions is not None and len(out.attentions) == layers
    plain = DeemForConditionalGeneration.from_pretrained(saved)(**batch())
    assert plain.hidden_states is None and plain.attentions is None
    torch.testing.assert_close(out.logits, plain.logits)


def test_return_dict_false_gives_tuples(tiny_model):
    data = batch()
    tiny_model.eval()
    out = tiny_model(**data, return_dict=False)
    assert isinstance(out, tuple)
    torch.testing.assert_close(out[2], tiny_model(**data).logits)  # (loss, ntp_loss, logits, ...)
    features = tiny_model.get_image_features(data["pixel_values"], return_dict=False)
    assert isinstance(features, tuple)
    torch.testing.assert_close(features[0], tiny_model.get_image_features(data["pixel_values"]).last_hidden_state)


def _prompt():
    torch.manual_seed(0)
    ids = torch.tensor([[BOS, 10] + image_slot() + [11]])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(1, 3, 64, 64),
            "max_new_tokens": 5, "do_sample": False}


@pytest.fixture
def open_model():
    from test_mmfs import open_mmfs

    from modeling_deem.tiny import tiny_config

    torch.manual_seed(0)
    return open_mmfs(DeemForConditionalGeneration(tiny_config()).eval())


def test_assisted_decoding_with_an_image_matches_greedy(open_model):
    from transformers import AutoModelForCausalLM

    from modeling_deem.tiny import tiny_config

    greedy = open_model.generate(**_prompt())
    torch.manual_seed(1)
    deem_assistant = DeemForConditionalGeneration(tiny_config()).eval()
    text_assistant = AutoModelForCausalLM.from_config(open_model.config.text_config).eval()
    for extra in ({"assistant_model": deem_assistant}, {"assistant_model": text_assistant},
                  {"prompt_lookup_num_tokens": 3}):
        assert torch.equal(open_model.generate(**_prompt(), **extra), greedy), extra


def test_static_cache_generation_matches_and_compilation_is_declared_unsupported(open_model):
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import CompileConfig

    greedy = open_model.generate(**_prompt())
    assert torch.equal(open_model.generate(**_prompt(), cache_implementation="static"), greedy)
    assert DeemForConditionalGeneration._can_compile_fullgraph is False
    config = GenerationConfig(compile_config=CompileConfig(fullgraph=True))
    config.compile_config._compile_all_devices = True
    assert not open_model._valid_auto_compile_criteria({}, config)


def test_a_prompt_given_as_embeddings_reads_like_its_ids(open_model):
    prompt = _prompt()
    ids = prompt.pop("input_ids")
    embeds = open_model.get_input_embeddings()(ids)
    with torch.no_grad():
        from_ids = open_model(input_ids=ids, pixel_values=prompt["pixel_values"]).logits
        from_embeds = open_model(inputs_embeds=embeds, pixel_values=prompt["pixel_values"]).logits
    torch.testing.assert_close(from_embeds, from_ids)
    generated = open_model.generate(input_ids=ids, **prompt)[:, ids.shape[1]:]
    assert torch.equal(open_model.generate(inputs_embeds=embeds, **prompt), generated)  # only new tokens
    beams = {"num_beams": 2, "max_new_tokens": 4, "do_sample": False}
    assert torch.equal(open_model.generate(inputs_embeds=embeds, pixel_values=prompt["pixel_values"], **beams),
                       open_model.generate(input_ids=ids, pixel_values=prompt["pixel_values"], **beams)[:, ids.shape[1]:])


def test_generate_leaves_the_callers_precomputed_image_features_alone(open_model):
    """Features encoded once by the caller serve several generate calls: beams expand a copy, and what a prompt
    given as embeddings leaves behind does not leak into the next call."""
    prompt = _prompt()
    ids, pixels = prompt.pop("input_ids"), prompt.pop("pixel_values")
    with torch.no_grad():
        features = open_model.get_image_features(pixels)
    kept = {key: value.clone() for key, value in features.items() if isinstance(value, torch.Tensor)}

    def fresh() -> dict:
        with torch.no_grad():
            return {"image": open_model.get_image_features(pixels)}

    embeds = open_model.get_input_embeddings()(ids)
    calls = [({"input_ids": ids}, {}), ({"input_ids": ids}, {"num_beams": 2}),
             ({"inputs_embeds": embeds}, {}), ({"input_ids": ids}, {})]
    for given, extra in calls:
        shared = open_model.generate(**given, **prompt, mm_encoder_outputs={"image": features}, **extra)
        assert torch.equal(shared, open_model.generate(**given, **prompt, mm_encoder_outputs=fresh(), **extra))
        for key, value in kept.items():
            assert torch.equal(features[key], value) and torch.equal(getattr(features, key), value), key


def test_shift_labels_give_the_same_ntp_loss_as_labels(tiny_model):
    data = batch()
    tiny_model.eval()
    labels = data.pop("labels")
    shifted = torch.full_like(labels, -100)
    shifted[:, :-1] = labels[:, 1:]
    with torch.no_grad():
        from_labels = tiny_model(**data, labels=labels).ntp_loss
        from_shifted = tiny_model(**data, shift_labels=shifted).ntp_loss
    torch.testing.assert_close(from_shifted, from_labels)


def test_image_features_return_the_convnext_hidden_states_on_request(tiny_model):
    pixels = batch()["pixel_values"]
    tiny_model.eval()
    with torch.no_grad():
        plain = tiny_model.get_image_features(pixels)
        full = tiny_model.get_image_features(pixels, output_hidden_states=True)
    stages = len(tiny_model.vision_tower.trunk.stages)
    assert plain.hidden_states is None and len(full.hidden_states) == stages + 1  # the stem, then each stage
    torch.testing.assert_close(full.last_hidden_state, plain.last_hidden_state)


def test_reentrant_checkpointing_is_asked_for_but_mmfs_trains_non_reentrantly(tiny_model, caplog):
    from transformers.utils import logging

    logging.enable_propagation()
    tiny_model.train()
    tiny_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    data = make_batch([[BOS, 10] + image_slot() + [11, 12] + image_slot() + [13, EOS]])
    tiny_model(**data).loss.backward()  # reentrant would backpropagate through the image encoder twice
    assert tiny_model.visual_resampler.queries.grad is not None
