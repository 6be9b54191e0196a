"""Project-written stand-in for transformers' `tests/generation/test_utils.py` (NOT vendored; see ../README.md).

The transformers 5.23.0 sdist on PyPI ships no tests/generation/, and no other official PyPI distribution has it,
so this file is written for DEEM-HF. It keeps the upstream interface that `ModelTesterMixin` and model tests rely on
(`GenerationTesterMixin`, `all_generative_model_classes`, `model_tester`, `prepare_config_and_inputs_for_generate`)
and upstream's test names where a test checks the same contract, but it is a smaller, independent set of checks of
`GenerationMixin.generate` on a decoder-only model (multimodal inputs included):

- every decoding strategy runs and returns the documented shapes: greedy, sampling, beam search, beam sampling;
- `return_dict_in_generate` outputs (scores, logits, attentions, hidden states, past_key_values) have the layout
  `generate` documents, with and without the cache;
- the cache is transparent: cached == uncached greedy; static cache == dynamic cache; continuing from a returned
  `past_key_values` == generating in one go; `logits_to_keep` changes nothing;
- left padding does not change the next-token logits;
- `inputs_embeds` generation matches `input_ids` generation;
- assisted decoding (self-assistant, prompt lookup) reproduces greedy search;
- `torch.compile(fullgraph=True)` of the decoding step (static cache; the eager backend, so only graph capture is
  checked, not code generation).

Model classes whose inputs carry per-image tensors must keep one image per row, so that slicing every tensor whose
first dimension is the batch size (what `prepare_config_and_inputs_for_generate` does) keeps images and rows
together.
"""

from __future__ import annotations

import copy
import tempfile

import torch
from transformers import CompileConfig, set_seed
from transformers.cache_utils import Cache, DynamicCache
from transformers.testing_utils import torch_device

# Config attributes that name multimodal placeholder tokens: generating them from a random model would open an
# image slot the test inputs do not provide an image for, so they are suppressed during the tests' generation.
_MULTIMODAL_TOKEN_ATTRIBUTES = (
    "image_token_id", "image_token_index", "image_start_token_id", "image_end_token_id", "video_token_id",
    "audio_token_id", "boi_token_id", "eoi_token_id", "vision_start_token_id", "vision_end_token_id",
)


class GenerationTesterMixin:
    model_tester = None
    all_generative_model_classes = ()
    input_name = "input_ids"
    max_new_tokens = 3
    # Inputs of `prepare_config_and_inputs_for_common` that `generate` does not take (training-only inputs).
    generation_drop_inputs: tuple[str, ...] = ("labels",)

    # --------------------------------------------------------------------------------------------- helpers
    def prepare_config_and_inputs_for_generate(self, batch_size: int = 2):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        rows = inputs[self.input_name].shape[0]
        prepared = {}
        for key, value in inputs.items():
            if key in self.generation_drop_inputs:
                continue
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows:
                value = value[:batch_size]
            prepared[key] = value.to(torch_device) if isinstance(value, torch.Tensor) else value
        return config, prepared

    def _suppressed_tokens(self, config) -> list[int]:
        vocab_size = config.get_text_config().vocab_size
        tokens = {getattr(config, name, None) for name in _MULTIMODAL_TOKEN_ATTRIBUTES}
        return sorted(t for t in tokens if isinstance(t, int) and 0 <= t < vocab_size)

    def _generate_kwargs(self, config, **overrides):
        """Fixed-length generation: EOS is never produced before `max_new_tokens` (min_new_tokens), and neither
        are multimodal placeholder tokens."""
        kwargs = {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.max_new_tokens, "do_sample": False,
                  "num_beams": 1}
        suppressed = self._suppressed_tokens(config)
        if suppressed:
            kwargs["suppress_tokens"] = suppressed
        kwargs.update(overrides)
        return kwargs

    def _model(self, model_class, config, eager_attention: bool = False):
        config = copy.deepcopy(config)
        if eager_attention:
            config._attn_implementation = "eager"
        set_seed(0)
        model = model_class(config).to(torch_device).eval()
        if eager_attention and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
        return model

    def _text_config(self, model):
        return model.config.get_text_config(decoder=True)

    def _check_sequences(self, sequences, inputs, num_rows_per_input: int = 1):
        prompt = inputs[self.input_name]
        self.assertEqual(tuple(sequences.shape),
                         (prompt.shape[0] * num_rows_per_input, prompt.shape[1] + self.max_new_tokens))
        self.assertTrue(torch.equal(sequences[::num_rows_per_input, : prompt.shape[1]], prompt),
                        "generate must return the prompt followed by the new tokens")

    def _check_dict_outputs(self, output, model, inputs, use_cache: bool, num_rows: int | None = None):
        text_config = self._text_config(model)
        prompt_length = inputs[self.input_name].shape[1]
        rows = inputs[self.input_name].shape[0] if num_rows is None else num_rows
        self.assertEqual(output.sequences.shape, (rows, prompt_length + self.max_new_tokens))
        vocab_size = text_config.vocab_size
        for name in ("scores", "logits"):
            steps = getattr(output, name)
            self.assertIsNotNone(steps, f"{name} were asked for but not returned")
            self.assertEqual(len(steps), self.max_new_tokens)
            for step in steps:
                self.assertEqual(tuple(step.shape), (rows, vocab_size))
        num_layers = text_config.num_hidden_layers
        heads = text_config.num_attention_heads
        hidden = text_config.hidden_size
        self.assertIsNotNone(output.attentions, "output_attentions=True but generate returned no attentions")
        self.assertIsNotNone(output.hidden_states, "output_hidden_states=True but generate returned no hidden states")
        self.assertEqual(len(output.attentions), self.max_new_tokens)
        self.assertEqual(len(output.hidden_states), self.max_new_tokens)
        for step in range(self.max_new_tokens):
            key = prompt_length + step
            query = 1 if (use_cache and step > 0) else key
            attentions = output.attentions[step]
            self.assertEqual(len(attentions), num_layers)
            for layer in attentions:
                self.assertEqual(tuple(layer.shape), (rows, heads, query, key))
            states = output.hidden_states[step]
            self.assertEqual(len(states), num_layers + 1)
            for layer in states:
                self.assertEqual(tuple(layer.shape), (rows, query, hidden))
        if use_cache:
            self.assertIsInstance(output.past_key_values, Cache)
        else:
            self.assertIsNone(output.past_key_values)

    def _dict_output_kwargs(self):
        return {"return_dict_in_generate": True, "output_scores": True, "output_logits": True,
                "output_attentions": True, "output_hidden_states": True}

    # ----------------------------------------------------------------------------------- decoding strategies
    def test_greedy_generate(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self._model(model_class, config)
            self._check_sequences(model.generate(**inputs, **self._generate_kwargs(config)), inputs)

    def test_greedy_generate_dict_outputs(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self._model(model_class, config, eager_attention=True)
            output = model.generate(**inputs, **self._generate_kwargs(config, use_cache=False),
                                    **self._dict_output_kwargs())
            self._check_dict_outputs(output, model, inputs, use_cache=False)

    def test_greedy_generate_dict_outputs_use_cache(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self._model(model_class, config, eager_attention=True)
            output = model.generate(**inputs, **self._generate_kwargs(config, use_cache=True),
                                    **self._dict_output_kwargs())
            self._check_dict_outputs(output, model, inputs, use_cache=True)

    def test_greedy_generate_use_cache_matches_no_cache(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self._model(model_class, config)
            cached = model.generate(**inputs, **self._generate_kwargs(config, use_cache=True),
                                    return_dict_in_generate=True, output_logits=True)
            uncached = model.generate(**inputs, **self._generate_kwargs(config, use_cache=False),
                                      return_dict_in_generate=True, output_logits=True)
            self.assertTrue(torch.equal(cached.sequences, uncached.sequences))
            for a, b in zip(cached.logits, uncached.logits):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

    def test_sample_generate(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self._model(model_class, config)
            kwargs = self._generate_kwargs(config, do_sample=True, top_k=10, temperature=0.7,
                                           num_return_sequences=2)
            set_seed(0)
            first = model.generate(**inputs, **kwargs)
            self._check_sequences(first, inputs, num_rows_per_input=2)
            set_seed(0)
            self.assertTrue(torch.equal(first, model.generate(**inputs, **kwargs)), "seeded sampling must repeat")

    def test_sample_generate_dict_output(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self._model(model_class, config, eager_attention=True)
            output = model.generate(**inputs, **self._generate_kwargs(config, do_sample=True, num_return_sequences=2,
                                                                      use_cache=True),
                                    **self._dict_output_kwargs())
            self._check_dict_outputs(output, model, inputs, use_cache=True,
                                     num_rows=2 * inputs[self.input_name].shape[0])

    def test_beam_search_generate(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self._model(model_class, config)
            output = model.generate(**inputs, **self._generate_kwargs(config, num_beams=2, num_return_sequences=2))
            self._check_sequences(output, inputs, num_rows_per_input=2)

    def test_beam_search_generate_dict_output(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self._model(model_class, config)
            rows = inputs[self.input_name].shape[0]
            output = model.generate(**inputs, **self._generate_kwargs(config, num_beams=2, num_return_sequences=2),
                                    return_dict_in_generate=True, output_scores=True, output_logits=True)
            self.assertEqual(tuple(output.sequences_scores.shape), (2 * rows,))
            self.assertEqual(len(output.scores), self.max_new_tokens)
            self.assertEqual(tuple(output.scores[0].shape), (2 * rows, self._text_config(model).vocab_size))
            self.assertEqual(tuple(output.beam_indices.shape[:1]), (2 * rows,))

    def test_beam_sample_generate(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self._model(model_class, config)
            set_seed(0)
            output = model.generate(**inputs, **self._generate_kwargs(config, num_beams=2, do_sample=True,
                                                                      num_return_sequences=2))
            self._check_sequences(output, inputs, num_rows_per_input=2)

    # ------------------------------------------------------------------------------------------------ caches
    def test_past_key_values_format(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self._model(model_class, config)
            with torch.no_grad():
                output = model(**inputs, use_cache=True)
            cache = output.past_key_values
            self.assertIsInstance(cache, DynamicCache)
            text_config = self._text_config(model)
            self.assertEqual(len(cache.layers), text_config.num_hidden_layers)
            rows, length = inputs[self.input_name].shape
            kv_heads = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
            head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
            for layer in cache.layers:
                self.assertEqual(tuple(layer.keys.shape), (rows, kv_heads, length, head_dim))
                self.assertEqual(tuple(layer.values.shape), (rows, kv_heads, length, head_dim))

    def test_generate_with_static_cache(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self._model(model_class, config)
            dynamic = model.generate(**inputs, **self._generate_kwargs(config))
            static = model.generate(**inputs, **self._generate_kwargs(config, cache_implementation="static"))
            self.assertTrue(torch.equal(dynamic, static))

    def test_generate_continue_from_past_key_values(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self._model(model_class, config)
            kwargs = self._generate_kwargs(config)
            full = model.generate(**inputs, **kwargs)
            first = model.generate(**inputs, **{**kwargs, "max_new_tokens": 1, "min_new_tokens": 1},
                                   return_dict_in_generate=True)
            continued_inputs = dict(inputs)
            continued_inputs[self.input_name] = first.sequences
            if "attention_mask" in inputs:
                mask = inputs["attention_mask"]
                continued_inputs["attention_mask"] = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            rest = self.max_new_tokens - 1
            continued = model.generate(**continued_inputs, **{**kwargs, "max_new_tokens": rest, "min_new_tokens": rest},
                                       past_key_values=first.past_key_values)
            self.assertTrue(torch.equal(full, continued))

    def test_generate_methods_with_logits_to_keep(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self._model(model_class, config)
            kwargs = self._generate_kwargs(config)
            with_keep = model.generate(**inputs, **kwargs, logits_to_keep=1)
            without = model.generate(**inputs, **kwargs, logits_to_keep=0)
            self.assertTrue(torch.equal(with_keep, without))

    # --------------------------------------------------------------------------------------- inputs variants
    def test_left_padding_compatibility(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self._model(model_class, config)
            ids = inputs[self.input_name]
            mask = inputs.get("attention_mask", torch.ones_like(ids))
            pad = self._text_config(model).pad_token_id or 0
            padded_ids = torch.cat([torch.full((ids.shape[0], 4), pad, dtype=ids.dtype, device=ids.device), ids], 1)
            padded_mask = torch.cat([torch.zeros_like(mask[:, :4]), mask], 1)
            position_ids = (padded_mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                plain = model(**{**inputs, "attention_mask": mask}).logits[:, -1]
                padded = model(**{**inputs, self.input_name: padded_ids, "attention_mask": padded_mask,
                                  "position_ids": position_ids}).logits[:, -1]
            torch.testing.assert_close(plain, padded, rtol=1e-4, atol=1e-4)

    def test_generate_from_inputs_embeds(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self._model(model_class, config)
            kwargs = self._generate_kwargs(config)
            from_ids = model.generate(**inputs, **kwargs)
            embeds = model.get_input_embeddings()(inputs[self.input_name])
            from_embeds = model.generate(**inputs, inputs_embeds=embeds, **kwargs)
            # With input_ids and inputs_embeds both given, generate returns the prompt ids plus the new tokens.
            self.assertTrue(torch.equal(from_ids, from_embeds))

    # ------------------------------------------------------------------------------------- assisted decoding
    def test_assisted_decoding_matches_greedy_search(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate(batch_size=1)
            model = self._model(model_class, config)
            kwargs = self._generate_kwargs(config, use_cache=True)
            greedy = model.generate(**inputs, **kwargs)
            assistant = self._model(model_class, config)
            assistant.generation_config.num_assistant_tokens = 2
            assistant.generation_config.num_assistant_tokens_schedule = "constant"
            assisted = model.generate(**inputs, **kwargs, assistant_model=assistant)
            self.assertTrue(torch.equal(greedy, assisted))

    def test_prompt_lookup_decoding_matches_greedy_search(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate(batch_size=1)
            model = self._model(model_class, config)
            kwargs = self._generate_kwargs(config, use_cache=True)
            greedy = model.generate(**inputs, **kwargs)
            lookup = model.generate(**inputs, **kwargs, prompt_lookup_num_tokens=2, max_matching_ngram_size=2)
            self.assertTrue(torch.equal(greedy, lookup))

    # ----------------------------------------------------------------------------------------------- compile
    def test_generate_compile_model_forward_fullgraph(self):
        for model_class in self.all_generative_model_classes:
            if not getattr(model_class, "_can_compile_fullgraph", False):
                self.skipTest(f"{model_class.__name__} does not declare _can_compile_fullgraph")
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self._model(model_class, config)
            kwargs = self._generate_kwargs(config, cache_implementation="static")
            eager = model.generate(**inputs, **kwargs)
            compile_config = CompileConfig(fullgraph=True, backend="eager", dynamic=False)
            compile_config._compile_all_devices = True
            torch._dynamo.reset()
            compiled = model.generate(**inputs, **kwargs, compile_config=compile_config)
            self.assertTrue(torch.equal(eager, compiled))

    # ------------------------------------------------------------------------------------------ save / load
    def test_generation_config_round_trip(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self._model(model_class, config)
            kwargs = self._generate_kwargs(config)
            before = model.generate(**inputs, **kwargs)
            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder)
                reloaded = model_class.from_pretrained(folder).to(torch_device).eval()
            self.assertEqual(reloaded.generation_config.to_diff_dict(), model.generation_config.to_diff_dict())
            self.assertTrue(torch.equal(before, reloaded.generate(**inputs, **kwargs)))
