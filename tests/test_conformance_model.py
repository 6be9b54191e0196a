"""transformers' common model and generation tests run on the tiny DEEM (issue 11), the way transformers' own
`tests/models/llava/test_modeling_llava.py` wires LLaVA.

`ModelTesterMixin` is transformers 5.23.0's own (vendored unmodified from its PyPI sdist); `GenerationTesterMixin`
is a project-written stand-in (the sdist ships no tests/generation/); see tests/transformers_common/README.md.

Overrides in `DeemModelTest`, by kind:
- adapted: the common test runs, with DEEM's inputs or DEEM's documented option (each says how and why);
- `self.skipTest(...)`: the test cannot apply to DEEM's architecture (each says why);
- `@pytest.mark.xfail(strict=True, reason="issue 11: ...")`: a real defect of the model, left failing on purpose
  until fixed (strict, so a fix shows up as XPASS, i.e. a failure, and the mark must then be removed).
"""

from __future__ import annotations

import contextlib
import unittest
import warnings
from unittest import mock

import pytest
import torch
from conftest import BOS, IMG, NUM_IMAGE_TOKENS, SOI, image_slot
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
from transformers.testing_utils import torch_device
from transformers_common.generation.test_utils import GenerationTesterMixin
from transformers_common.test_configuration_common import ConfigTester

with warnings.catch_warnings():
    # transformers registers its own marks (flash_attn_3_test, torch_compile_test, ...) in its conftest; here they
    # are only labels on tests that do not run on CPU.
    warnings.filterwarnings("ignore", message=r"Unknown pytest\.mark\.", category=pytest.PytestUnknownMarkWarning)
    from transformers_common.test_modeling_common import ModelTesterMixin, ids_tensor

from modeling_deem import DeemConfig, DeemForConditionalGeneration
from modeling_deem.tiny import TINY_VOCAB_SIZE, tiny_config, tiny_config_dict

FIRST_TEXT_ID = 6  # ids below are specials (<unk>, <s>, </s>, <pad>, <|startofimage|>, <|sniffer|>)


class DeemModelTester:
    """The tiny DEEM (`modeling_deem.tiny.tiny_config`) and a batch whose every row holds one image slot:
    `<s> t t <|startofimage|> <|sniffer|>×77 t t t t` (85 tokens), with one 64×64 image per row.

    7 rows: `test_eager_matches_sdpa_inference` runs on 7 rows and pads a smaller batch with random rows (ids < 5, so
    no image slot) and random images, which no longer match; with 7 rows nothing is padded."""

    def __init__(self, parent, batch_size: int = 7, text_before: int = 2, text_after: int = 4, image_size: int = 64):
        self.parent = parent
        self.batch_size = batch_size
        self.text_before = text_before
        self.text_after = text_after
        self.seq_length = 1 + text_before + len(image_slot()) + text_after
        self.image_size = image_size
        self.num_channels = 3
        self.is_training = True
        config = tiny_config_dict()
        self.text_config = config["text_config"]
        self.vision_config = config["vision_config"]
        self.vocab_size = TINY_VOCAB_SIZE
        self.hidden_size = self.text_config["hidden_size"]
        self.num_hidden_layers = self.text_config["num_hidden_layers"]
        self.num_attention_heads = self.text_config["num_attention_heads"]
        self.pad_token_id = self.text_config["pad_token_id"]
        self.num_image_tokens = NUM_IMAGE_TOKENS
        self.decoder_image_size = config["decoder_image_size"]

    def get_config(self) -> DeemConfig:
        return tiny_config()

    def prepare_config_and_inputs(self):
        text = lambda n: ids_tensor([self.batch_size, n], self.vocab_size - FIRST_TEXT_ID) + FIRST_TEXT_ID  # noqa: E731
        slot = torch.tensor(image_slot()).expand(self.batch_size, -1)
        bos = torch.full((self.batch_size, 1), BOS)
        input_ids = torch.cat([bos, text(self.text_before), slot, text(self.text_after)], dim=1).to(torch_device)
        pixel_values = torch.randn(self.batch_size, self.num_channels, self.image_size, self.image_size,
                                   device=torch_device)
        return self.get_config(), input_ids, pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, pixel_values = self.prepare_config_and_inputs()
        assert int((input_ids == SOI).sum()) == self.batch_size
        assert int((input_ids == IMG).sum()) == self.batch_size * NUM_IMAGE_TOKENS
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixel_values}
        return config, inputs


class DeemModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (DeemForConditionalGeneration,)
    all_generative_model_classes = (DeemForConditionalGeneration,)
    _is_composite = True
    # Inputs that tests building their own inputs (eager vs SDPA) must keep: the text has image slots.
    additional_model_inputs = ["pixel_values"]
    with_decoder_views = True  # see _prepare_for_class
    # DEEM's modeling file has no "# Copyright <year>" line, which reads as "added before 2023" and would skip
    # test_can_init_all_missing_weights; opt in.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        # DEEM registers itself for AutoModelForImageTextToText as remote code (register_for_auto_class), which
        # transformers' name mappings do not list; the common tests pick their checks by those names (labels for
        # training tests, shift_labels, the generation layout of get_image_features), so list it for the test.
        patcher = mock.patch.dict(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, {"deem": "DeemForConditionalGeneration"})
        patcher.start()
        self.addCleanup(patcher.stop)
        self.model_tester = DeemModelTester(self)
        # As llava's test: the default config (paper sizes; building a config allocates no weights).
        self.config_tester = ConfigTester(self, config_class=DeemConfig, has_text_modality=False)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        """Training inputs: DEEM trains on NTP + NIP + CSR, so with the labels (which upstream gives image-text-to-text
        classes) come the decoder views (`decoder_pixel_values`, one per image) that the two diffusion losses need."""
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            if self.with_decoder_views:
                pixel_values = inputs_dict["pixel_values"]
                size = self.model_tester.decoder_image_size
                views = torch.rand(pixel_values.shape[0], 3, size, size, generator=torch.Generator().manual_seed(0))
                inputs_dict.setdefault("decoder_pixel_values", (views * 2 - 1).to(pixel_values.device))
        return inputs_dict

    def test_config(self):
        """`ConfigTester.run_common_tests()`, step by step, less the composite round trip (its own test below)."""
        tester = self.config_tester
        tester.create_and_test_config_common_properties()
        tester.create_and_test_config_to_json_string()
        tester.create_and_test_config_to_json_file()
        tester.create_and_test_config_from_and_save_pretrained()
        tester.create_and_test_config_from_and_save_pretrained_subfolder()
        tester.create_and_test_config_with_num_labels()
        tester.check_config_arguments_init()
        tester.create_and_test_config_from_pretrained_custom_kwargs()
        tester.check_config_can_be_init_without_params()

    def test_config_composite_round_trip(self):
        self.config_tester.create_and_test_config_from_and_save_pretrained_composite()

    # ------------------------------------------------------------------------------ adapted (test setup)
    def test_model_outputs_equivalence(self):
        """Run with NTP labels only: NIP and CSR sample their noise and timesteps at every call (that is what a
        denoising loss is), so two calls with decoder views never give the same losses, tuple or dict."""
        self.with_decoder_views = False
        super().test_model_outputs_equivalence()

    @staticmethod
    def _lenient_loading():
        """DEEM's `from_pretrained` is strict by design: a checkpoint with missing weights is an error that names them.
        Tests of transformers' lenient loading (missing weights initialised, `missing_keys` reported) run with DEEM's
        `strict=False`, which is that behaviour."""
        original = DeemForConditionalGeneration.from_pretrained.__func__

        def lenient(cls, *args, **kwargs):
            kwargs.setdefault("strict", False)
            return original(cls, *args, **kwargs)

        return mock.patch.object(DeemForConditionalGeneration, "from_pretrained", classmethod(lenient))

    def test_model_weights_reload_no_missing_tied_weights(self):
        with self._lenient_loading():
            super().test_model_weights_reload_no_missing_tied_weights()

    def test_can_init_all_missing_weights(self):
        with self._lenient_loading():
            super().test_can_init_all_missing_weights()

    def _image_features_get_expected_num_hidden_states(self, model_tester=None):
        """The ConvNeXt tower's hidden states as transformers' ConvNextModel returns them: the stem's output and each
        stage's."""
        return len(self.model_tester.vision_config["depths"]) + 1

    # ----------------------------------------------------------------------- (b) not applicable to DEEM
    def test_get_image_features_attentions(self):
        self.skipTest("DEEM's image encoder is a convolutional network (timm ConvNeXt): it has no attentions to return")

    def test_sdpa_can_dispatch_composite_models(self):
        self.skipTest("DEEM's vision tower is a timm ConvNeXt wrapped in a plain nn.Module, with no attention and so no "
                      "attention implementation to dispatch; the LLM's dispatch is covered by "
                      "test_attn_implementation_composite_models and test_eager_matches_sdpa_inference")

    def test_model_base_model_prefix(self):
        self.skipTest("DEEM has no base-model/head split (no DeemModel: the LM head stays inside language_model and "
                      "the image side sits beside it), so `base_model` is the model itself")

    # ----------------------------------------------------------------------------- (a) defects, issue 11
    def _without_subtests(self):
        """Some common tests check inside `self.subTest`, whose failure pytest reports apart from the test, so an
        xfail mark on the test would see it pass; without the subTest the error reaches the test."""
        return mock.patch.object(self, "subTest", lambda *args, **kwargs: contextlib.nullcontext())

    def test_inputs_embeds(self):
        super().test_inputs_embeds()

    def test_generate_from_inputs_embeds(self):
        super().test_generate_from_inputs_embeds()

    def test_get_image_features_hidden_states(self):
        super().test_get_image_features_hidden_states()

    def test_training_gradient_checkpointing_use_reentrant_true(self):
        with self._without_subtests():
            super().test_training_gradient_checkpointing_use_reentrant_true()

    def test_causal_lm_loss_honors_shift_labels(self):
        with self._without_subtests():
            super().test_causal_lm_loss_honors_shift_labels()
