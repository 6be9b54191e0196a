"""DEEM as a transformers model: image encoder + resampler → causal LM, and a frozen diffusers decoder that
adds the next-image (NIP) and consistency (CSR) losses.

Exported as remote code: import siblings only with ``from .x import Y``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    GenerationMixin,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, logging

from .atomic_save import atomic_directory
from .configuration_deem import CONDITION_RESAMPLER_CONFIG, VISUAL_RESAMPLER_CONFIG, DeemConfig, DeemVisionConfig
from .diffusion_deem import build_noise_scheduler, build_unet, build_vae, denoising_loss, encode_latents
from .diffusion_features_deem import DiffusionFeatureExtractor
from .image_generation_deem import DeemImageGenerationMixin
from .mmfs_language import ImageMemory, add_mmfs_layers, document_starts, image_slots, image_visibility
from .mmfs_unet import DecoderImageContext, DeemDecoderMMFS
from .positional_embeddings import sincos_1d
from .resampler_deem import DeemResampler
from .vision_deem import DeemVisionTower

logger = logging.get_logger(__name__)
# Modules that exist only with the diffusion decoder: a checkpoint's weights for them are expected extras when a
# model is loaded with with_image_decoder=False (stage III from a stage II checkpoint).
DECODER_ONLY_PREFIXES = ("unet.", "vae.", "decoder_mmfs.", "image_to_condition.", "context_proj.",
                         "condition_resampler.", "negative_condition.")


@dataclass
class DeemImageFeatures(BaseModelOutputWithPooling):
    """What the image side makes of each image, in transformers' layout so that `generate` can encode images once
    before the first step and repeat them for beams.

    last_hidden_state: `(num_images, num_image_tokens, resampler_hidden)`, the resampler output both heads read.
    pooler_output: `(num_images, num_image_tokens, text_hidden)`, the tokens the LLM reads (e_n); also
        `image_embeds`.
    condition_embeds: `(num_images, num_image_tokens, cross_attention_dim)`, the CSR condition for the UNet
        (None when the model has no image decoder).
    mmfs_features / decoder_mmfs_features: `(num_images, S, vision_hidden)`, the multi-scale maps the LLM's and
        the UNet's MMFS read (levels concatenated, row-major); their levels' (h, w) in `mmfs_spatial_shapes` /
        `decoder_mmfs_spatial_shapes`. None without MMFS.
    """

    condition_embeds: torch.FloatTensor | None = None
    mmfs_features: torch.FloatTensor | None = None
    decoder_mmfs_features: torch.FloatTensor | None = None
    mmfs_spatial_shapes: tuple[tuple[int, int], ...] | None = None
    decoder_mmfs_spatial_shapes: tuple[tuple[int, int], ...] | None = None

    @property
    def image_embeds(self) -> torch.FloatTensor:
        return self.pooler_output


@dataclass
class DeemCausalLMOutputWithPast(ModelOutput):
    """`loss = ntp_loss + λ_NIP·nip_loss + λ_CSR·csr_loss` over the parts that were computed."""

    loss: torch.FloatTensor | None = None
    ntp_loss: torch.FloatTensor | None = None
    nip_loss: torch.FloatTensor | None = None
    csr_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: torch.FloatTensor | None = None


class DeemPreTrainedModel(PreTrainedModel):
    config_class = DeemConfig
    config: DeemConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    # The losses are per-batch means: Trainer must not pass `num_items_in_batch` into forward.
    accepts_loss_kwargs = False
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_attention_backend = True
    # Not compilable as one graph: which images each token sees (MMFS) and where each image's slot is are found
    # from the token ids at run time (data-dependent shapes: placeholders per row, images per document), and
    # the prefill/decoding split depends on the cache length. Static caches work; generate never auto-compiles.
    _can_compile_fullgraph = False


class DeemForConditionalGeneration(DeemImageGenerationMixin, DeemPreTrainedModel, GenerationMixin):
    """The DEEM model. The UNet and VAE are frozen (no gradient, no optimizer state) in every stage."""

    def __init__(self, config: DeemConfig) -> None:
        super().__init__(config)
        text_hidden = config.text_config.hidden_size
        resampler_hidden = config.resampler_config.hidden_size
        native = []
        if config.vision_backbone in ("convnext", "both"):
            self.vision_tower = DeemVisionTower(config.vision_config, config.vision_levels())
            native.append(self.vision_tower.native_modules)
        if config.vision_backbone in ("diffusion", "both"):
            features = config.diffusion_features_config
            self.diffusion_text_encoder = CLIPTextModel(CLIPTextConfig(**features["text_encoder_config"]))
            self.diffusion_features = DiffusionFeatureExtractor(features, config.unet_config,
                                                                config.vision_config.hidden_size)
        self.visual_resampler = DeemResampler(config.resampler_config, config.num_image_tokens,
                                              qk_norm=config.resampler_qk_norm)
        self.image_to_text = nn.Linear(resampler_hidden, text_hidden)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        # The LLM may stay frozen (stage I) while the tokens DEEM adds still learn: a learned vector added to the
        # <|startofimage|> input embedding and a small output head whose logits add to the new tokens' columns.
        # Modules, not bare parameters, so peft's `modules_to_save` can keep them in a LoRA run's adapter.
        self.image_start_embedding = nn.Embedding(1, text_hidden)
        self.new_token_head = nn.Linear(text_hidden, len(config.new_token_ids))
        mmfs_modules = []
        if config.mmfs:
            mmfs_modules = add_mmfs_layers(self.language_model, config.vision_config.hidden_size, config.mmfs_config)
        if config.with_image_decoder:
            cross = config.cross_attention_dim
            self.image_to_condition = nn.Linear(resampler_hidden, cross)
            self.context_proj = nn.Linear(text_hidden, text_hidden)
            self.condition_resampler = DeemResampler(config.condition_resampler_config, config.num_image_tokens)
            self.negative_condition = nn.Embedding(config.num_image_tokens, cross)  # the learned null condition
            self.unet = build_unet(config.unet_config)
            self.vae = build_vae(config.vae_config)
            self.freeze_image_decoder()
            self.noise_scheduler = build_noise_scheduler(config.scheduler_config)
            native += [self.unet, self.vae]
            if config.decoder_mmfs:
                self.decoder_mmfs = DeemDecoderMMFS(config.unet_config, config.vision_config.hidden_size,
                                                    config.mmfs_config)
                mmfs_modules.append(self.decoder_mmfs)
        self.processor: Any = None  # saved with the model when set (see save_pretrained)
        # Modules that keep their own library's initialisation instead of transformers' normal(0, 0.02).
        self._native_init_ids = frozenset(id(m) for part in native for m in part.modules())
        self.post_init()
        # The authors' MMFS init (zero gates and convolutions, spread offsets). Done here rather than in
        # _init_weights: the LLM's layers are initialised by the LLM's own _init_weights.
        for module in mmfs_modules:
            module.reset_parameters()

    # ----------------------------------------------------------------------------------------------- plumbing
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if id(module) in getattr(self, "_native_init_ids", ()):
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            return
        if isinstance(module, DeemResampler):
            init.normal_(module.queries, std=std)
        elif module is getattr(self, "new_token_head", None):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
            return
        elif module is getattr(self, "image_start_embedding", None):
            init.zeros_(module.weight)
            return
        super()._init_weights(module)

    def freeze_image_decoder(self) -> None:
        """UNet, VAE (and the diffusion backbone's text encoder) never train: no gradient, hence no optimizer
        state. LoRA adapters added to the UNet (peft) are the exception."""
        if self.config.with_image_decoder:
            for name, parameter in self.unet.named_parameters():
                parameter.requires_grad_("lora_" in name)
            self.vae.requires_grad_(False)
        if hasattr(self, "diffusion_text_encoder"):
            self.diffusion_text_encoder.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args: Any, strict: bool = True, **kwargs: Any) -> DeemForConditionalGeneration:
        """As `PreTrainedModel.from_pretrained`, but strict: a checkpoint with missing, unexpected or mismatched
        weights is an error that names them (a silently re-initialised resampler or head is the worst outcome).
        The decoder-side weights of a checkpoint loaded with `with_image_decoder=False` are expected extras.
        `strict=False` loads anyway, for conversions and partial loads (`output_loading_info=True` lists what
        was missing). Loading puts fresh parameters in, so the decoder is re-frozen. A local folder's
        processor, when it has one, becomes `model.processor` (see `save_pretrained`)."""
        wants_info = kwargs.get("output_loading_info", False)
        model, info = super().from_pretrained(*args, **{**kwargs, "output_loading_info": True})
        if strict:
            model._check_loaded_keys(info)
        model.freeze_image_decoder()
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        if source is not None and (Path(source) / "processor_config.json").is_file():
            model.processor = _load_processor(Path(source))
        return (model, info) if wants_info else model

    def _decoder_only_prefixes(self) -> tuple[str, ...]:
        """Where a with-decoder checkpoint holds weights this decoder-less model has no place for: the decoder
        side, and the ConvNeXt levels (adapters, deeper stages) that only the UNet's MMFS reads."""
        with_decoder = copy.deepcopy(self.config)
        with_decoder.with_image_decoder = True
        mine = self.config.vision_levels()
        extra = sorted(set(with_decoder.vision_levels()) - set(mine))
        return (DECODER_ONLY_PREFIXES + tuple(f"vision_tower.adapters.{level}." for level in extra)
                + tuple(f"vision_tower.trunk.stages.{level}." for level in extra if level > max(mine)))

    def _check_loaded_keys(self, info: dict[str, Any]) -> None:
        unexpected = set(info.get("unexpected_keys") or ())
        if not self.config.with_image_decoder:
            unexpected = {key for key in unexpected if not key.startswith(self._decoder_only_prefixes())}
        problems = {
            "missing": sorted(info.get("missing_keys") or ()),
            "unexpected": sorted(unexpected),
            "mismatched in shape": sorted(str(item[0]) if isinstance(item, tuple) else str(item)
                                          for item in info.get("mismatched_keys") or ()),
        }
        problems = {kind: keys for kind, keys in problems.items() if keys}
        if problems:
            listed = "; ".join(f"{kind}: {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''} ({len(keys)})"
                               for kind, keys in problems.items())
            raise ValueError(f"The checkpoint does not fit this DEEM model ({listed}). Pass strict=False to load "
                             "it anyway (the missing parts keep their fresh initialisation).")

    def train(self, mode: bool = True) -> DeemForConditionalGeneration:
        """The frozen diffusion parts stay in eval mode (no dropout) whatever the rest does."""
        super().train(mode)
        if self.config.with_image_decoder:
            self.unet.eval()
            self.vae.eval()
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def _require_image_decoder(self, what: str) -> None:
        if not self.config.with_image_decoder:
            raise ValueError(f"{what} needs the diffusion image decoder, but this model has with_image_decoder=False.")

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained`, made self-contained and atomic.

        Self-contained: the model's processor (`model.processor`: the one `from_pretrained` found in its folder,
        or one you set) is saved with it, so the folder feeds `pipeline` and `python -m evaluation` as it is;
        without one, a warning says so. Atomic: the save is written beside the folder and swapped in (see
        `atomic_save`), so a kill leaves the old save or the new one, never a mix of their shards. Also maps
        `AutoModel` to this class, so both auto classes load the folder with remote code."""
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.setdefault("AutoModel", f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}")
        self.config.auto_map = auto_map
        if not kwargs.get("is_main_process", True):
            super().save_pretrained(save_directory, *args, **kwargs)  # writes nothing; joins collective saves
            return
        if kwargs.get("push_to_hub"):
            kwargs.setdefault("repo_id", Path(save_directory).name)  # not the staging folder's name
        processor = getattr(self, "processor", None)
        with atomic_directory(save_directory) as staging:
            super().save_pretrained(staging, *args, **kwargs)
            if processor is not None:
                processor.save_pretrained(staging)
        if processor is None:
            logger.warning(
                "Saved without a processor: pipeline(...) and `python -m evaluation` need one in the folder. "
                "Set `model.processor = processor` before saving (or save the processor into the folder).")

    # ------------------------------------------------------------------------------------------ image side
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        image_masks: torch.Tensor | None = None,
        diffusion_pixel_values: torch.FloatTensor | None = None,
        condition_input_ids: torch.LongTensor | None = None,
        condition_attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> DeemImageFeatures:
        """Images `(N, 3, H, W)` (+ optional region masks `(N, H, W)`) → 77 tokens each for the LLM and CSR.

        With a diffusion backbone, `diffusion_pixel_values` (N, 3, h, w) in [-1, 1] and the conditioning texts'
        `condition_input_ids` (from `DeemDiffusionProcessor`) feed the UNet feature extractor; its tokens join
        (or replace) the ConvNeXt tokens at the resampler's input. Returns a `DeemImageFeatures`, or its
        `to_tuple()` with `return_dict=False` (other generate bookkeeping in `kwargs` is ignored)."""
        tokens, maps = [], {}
        if hasattr(self, "vision_tower"):
            resampler_tokens, level_tokens, level_shapes = self.vision_tower(pixel_values, image_masks)
            tokens.append(resampler_tokens)
            if self.config.mmfs:
                maps = self._mmfs_maps(level_tokens, level_shapes)
        elif image_masks is not None:
            raise ValueError("Region masks need the ConvNeXt backbone (vision_backbone 'convnext' or 'both').")
        if hasattr(self, "diffusion_features"):
            if diffusion_pixel_values is None or condition_input_ids is None:
                raise ValueError("The diffusion backbone needs diffusion_pixel_values and condition_input_ids "
                                 "(DeemDiffusionProcessor makes them).")
            if diffusion_pixel_values.shape[0] != pixel_values.shape[0]:
                raise ValueError(f"Got {diffusion_pixel_values.shape[0]} diffusion views for {pixel_values.shape[0]} images.")
            tokens.append(self.diffusion_features(
                self.unet, self.vae, self.noise_scheduler, self.diffusion_text_encoder, diffusion_pixel_values,
                condition_input_ids, condition_attention_mask,
            ).to(tokens[0].dtype if tokens else self.visual_resampler.queries.dtype))
        resampled = self.visual_resampler(torch.cat(tokens, dim=1))
        features = DeemImageFeatures(
            last_hidden_state=resampled,
            pooler_output=self.image_to_text(resampled),
            condition_embeds=self.image_to_condition(resampled) if self.config.with_image_decoder else None,
            **maps,
        )
        return_dict = kwargs.get("return_dict")
        return features if (self.config.return_dict if return_dict is None else return_dict) else features.to_tuple()

    def _mmfs_maps(self, level_tokens: dict[int, torch.Tensor], level_shapes: dict[int, tuple[int, int]]) -> dict:
        """The LLM's and the UNet's MMFS inputs from the vision tower's adapted levels."""
        mmfs = self.config.mmfs_config
        maps = {}
        for prefix, key, wanted in (("", "language_levels", True), ("decoder_", "decoder_levels", self.config.decoder_mmfs)):
            if wanted:
                levels = mmfs[key]
                maps[f"{prefix}mmfs_features"] = torch.cat([level_tokens[level] for level in levels], dim=1)
                maps[f"{prefix}mmfs_spatial_shapes"] = tuple(level_shapes[level] for level in levels)
        return maps

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.FloatTensor, num_images: int
    ) -> torch.BoolTensor:
        """Where the image tokens go; refuses a text whose image slots do not match the images given."""
        if input_ids is None:
            placeholder = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == placeholder).all(-1)
        else:
            mask = input_ids == self.config.image_token_id
        per_image = self.config.num_image_tokens
        found = int(mask.sum())
        if found != num_images * per_image:
            raise ValueError(
                f"Got {num_images} images but the text has {found / per_image:g} image slots ({found} image "
                f"placeholder tokens, {per_image} per image); the numbers must match."
            )
        return mask

    # ---------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_masks: torch.Tensor | None = None,
        decoder_pixel_values: torch.FloatTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: DeemImageFeatures | dict[str, DeemImageFeatures] | None = None,
        diffusion_pixel_values: torch.FloatTensor | None = None,
        condition_input_ids: torch.LongTensor | None = None,
        condition_attention_mask: torch.Tensor | None = None,
        image_layout_ids: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> DeemCausalLMOutputWithPast:
        """Text + images in; logits and the three losses out.

        pixel_values: encoder views `(num_images, 3, H, W)`, in order of their slots in the batch.
        image_masks: optional region masks `(num_images, H, W)` in [0, 1] (mask-aware extractor, region CSR).
        decoder_pixel_values: decoder views `(num_images, 3, 512, 512)` in [-1, 1] of the same images; when given
            (training), NIP and CSR are computed, with each image encoded by the VAE once for both.
        labels: next-token targets; image placeholders, `<s>` and a `<|startofimage|>` straight after `<s>` are
            never targets.
        mm_encoder_outputs: precomputed `get_image_features` output (or transformers' `{"image": ...}`), used
            instead of `pixel_values`: `generate` encodes the images once this way, and an image asked several
            questions can be encoded once by the caller.
        diffusion_pixel_values, condition_input_ids, condition_attention_mask: the diffusion backbone's inputs
            (see `get_image_features`).
        image_layout_ids: the whole rows so far when `input_ids` holds only the newest tokens (cached decoding):
            MMFS reads from them which earlier images each new token sees. `generate` passes them.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        # What the call leaves unsaid comes from DEEM's config (not the LLM's, which from_pretrained(...,
        # output_attentions=True) does not reach).
        return_dict = kwargs.pop("return_dict", None)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        outputs, image_features = self._run_language_model(
            input_ids, attention_mask, pixel_values, image_masks, position_ids, past_key_values, inputs_embeds,
            mm_encoder_outputs=mm_encoder_outputs, use_cache=use_cache, image_layout_ids=image_layout_ids,
            image_inputs={"diffusion_pixel_values": diffusion_pixel_values, "condition_input_ids": condition_input_ids,
                          "condition_attention_mask": condition_attention_mask}, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.output_logits(hidden[:, keep, :])

        ntp_loss = nip_loss = csr_loss = None
        if labels is not None:
            if input_ids is not None:
                labels = self.ntp_labels(labels, input_ids)
            ntp_loss = self.language_model.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size
            )
        if (decoder_pixel_values is None and self.training and labels is not None and image_features is not None
                and self.config.with_image_decoder and (self.config.nip_loss_weight or self.config.csr_loss_weight)):
            logger.warning_once(
                f"Training with images but without decoder_pixel_values: only NTP is computed, although "
                f"nip_loss_weight={self.config.nip_loss_weight} and csr_loss_weight={self.config.csr_loss_weight}. "
                "Give decoder views (processor(..., return_decoder_views=True) / DeemDataCollator(decoder_views="
                "True)), or set both weights to 0 for NTP-only training.")
        if decoder_pixel_values is not None:
            nip_loss, csr_loss = self._diffusion_losses(
                decoder_pixel_values, image_features, image_masks, hidden, input_ids, attention_mask, position_ids
            )

        loss = None
        for part, weight in ((ntp_loss, 1.0), (nip_loss, self.config.nip_loss_weight),
                             (csr_loss, self.config.csr_loss_weight)):
            if part is not None:
                loss = weight * part if loss is None else loss + weight * part
        output = DeemCausalLMOutputWithPast(
            loss=loss,
            ntp_loss=ntp_loss,
            nip_loss=nip_loss,
            csr_loss=csr_loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features.image_embeds if image_features is not None else None,
        )
        return output if return_dict else output.to_tuple()

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head's logits plus the trainable new-token head's on the new tokens' columns."""
        logits = self.get_output_embeddings()(hidden)
        ids = torch.tensor(self.config.new_token_ids, device=logits.device)
        return logits.index_add(-1, ids, self.new_token_head(hidden).to(logits.dtype))

    def ntp_labels(self, labels: torch.LongTensor, input_ids: torch.LongTensor) -> torch.LongTensor:
        """The original's NTP targets: never an image placeholder, a `<s>`, or a `<|startofimage|>` right after
        `<s>` (a document that opens with an image says nothing about when to start one)."""
        ignored = input_ids == self.config.image_token_id
        bos = self.config.bos_token_id
        if bos is not None:
            after_bos = torch.zeros_like(ignored)
            after_bos[:, 1:] = (input_ids[:, :-1] == bos) & (input_ids[:, 1:] == self.config.image_start_token_id)
            ignored |= (input_ids == bos) | after_bos
        return labels.masked_fill(ignored, -100)

    def _run_language_model(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        pixel_values: torch.FloatTensor | None,
        image_masks: torch.Tensor | None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        mm_encoder_outputs: DeemImageFeatures | dict[str, DeemImageFeatures] | None = None,
        image_inputs: dict[str, Any] | None = None,
        image_layout_ids: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> tuple[Any, DeemImageFeatures | None]:
        """Splice the image tokens into the text embeddings and run the LLM's decoder (no LM head); MMFS layers
        read the images' feature maps."""
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if input_ids is not None:
            starts = (input_ids == self.config.image_start_token_id).unsqueeze(-1)
            inputs_embeds = inputs_embeds + starts.to(inputs_embeds.dtype) * self.image_start_embedding.weight[0].to(
                inputs_embeds.dtype)
        if isinstance(mm_encoder_outputs, dict) and not isinstance(mm_encoder_outputs, ModelOutput):
            mm_encoder_outputs = mm_encoder_outputs.get("image")
        image_features = mm_encoder_outputs
        if image_features is None and pixel_values is not None:
            image_features = self.get_image_features(pixel_values, image_masks, return_dict=True, **(image_inputs or {}))
        # A cached decoding step holds only new text tokens: the images are kept for MMFS, not spliced again.
        decoding_step = (image_layout_ids is not None and input_ids is not None
                         and image_layout_ids.shape[1] > input_ids.shape[1])
        if image_features is not None and not decoding_step:
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features.image_embeds.shape[0])
            image_embeds = image_features.image_embeds.to(inputs_embeds.dtype).reshape(-1, inputs_embeds.shape[-1])
            inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1).expand_as(inputs_embeds), image_embeds)
        elif image_features is None and input_ids is not None and _is_prefill(past_key_values):
            slots = int((input_ids == self.config.image_token_id).sum()) // self.config.num_image_tokens
            if slots:
                raise ValueError(f"The text has {slots} image slots but no pixel_values were given.")
        if image_features is not None and self.config.mmfs:
            kwargs["image_memory"] = self.image_memory(
                image_features, input_ids if image_layout_ids is None else image_layout_ids, inputs_embeds.shape[1],
                position_ids)

        outputs = self.language_model.get_decoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            return_dict=True,
            **kwargs,
        )
        return outputs, image_features

    def image_memory(
        self, image_features: DeemImageFeatures, layout_ids: torch.LongTensor | None, num_queries: int,
        position_ids: torch.LongTensor | None = None,
    ) -> ImageMemory:
        """What the LLM's MMFS layers read for the last `num_queries` tokens of `layout_ids`. Without gradients
        (generation) each layer's projected values are kept on `image_features` and reused at every step."""
        if image_features.mmfs_features is None:
            raise ValueError("MMFS needs the images' feature maps (mmfs_features): encode them with this model's "
                             "get_image_features.")
        if layout_ids is None:
            raise ValueError("MMFS needs input_ids (or image_layout_ids) to know which images each token sees.")
        table, visible = image_visibility(layout_ids, num_queries, self.config.image_token_id,
                                          self.config.num_image_tokens, self.config.bos_token_id, position_ids)
        cache = None
        if not torch.is_grad_enabled():
            cache = image_features.__dict__.setdefault("_mmfs_value_cache", {})
        return ImageMemory(image_features.mmfs_features, list(image_features.mmfs_spatial_shapes), table, visible,
                           cache)

    def _valid_auto_compile_criteria(self, model_kwargs: dict[str, Any], generation_config: Any) -> bool:
        """Never: see `_can_compile_fullgraph` (a static cache on a GPU would otherwise trigger compilation)."""
        return False

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, *args: Any, **kwargs: Any) -> dict:
        """transformers' inputs, plus what MMFS needs at every cached step: the encoded images (generate drops
        them after the prefill) and the whole rows so far (`image_layout_ids`)."""
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        if self.config.mmfs and kwargs.get("mm_encoder_outputs"):
            inputs.setdefault("mm_encoder_outputs", kwargs["mm_encoder_outputs"])
            inputs["image_layout_ids"] = input_ids
        return inputs

    def _expand_multimodal_outputs(
        self, input_ids: torch.LongTensor, mm_encoder_output: dict, expand_size: int = 1,
        inputs_embeds: torch.Tensor | None = None,
    ) -> dict:
        """Beam search / several return sequences: each row's images repeated as a block, every per-image field
        (LLM tokens, CSR condition, MMFS maps) alike."""
        features = mm_encoder_output.get("image")
        if features is None or expand_size == 1 or input_ids is None:
            return super()._expand_multimodal_outputs(input_ids, mm_encoder_output, expand_size, inputs_embeds)
        rows, _ = image_slots(input_ids, self.config.image_token_id, self.config.num_image_tokens)
        order = torch.cat([torch.nonzero(rows == row)[:, 0] for row in range(input_ids.shape[0])
                           for _ in range(expand_size)])
        for key, value in list(features.items()):
            if isinstance(value, torch.Tensor) and value.shape[0] == len(rows):
                features[key] = value[order.to(value.device)]
        return mm_encoder_output

    # ------------------------------------------------------------------------------------ diffusion losses
    def _diffusion_losses(
        self,
        decoder_pixel_values: torch.FloatTensor,
        image_features: DeemImageFeatures | None,
        image_masks: torch.Tensor | None,
        hidden: torch.FloatTensor,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        self._require_image_decoder("decoder_pixel_values (NIP/CSR losses)")
        if image_features is None:
            raise ValueError("decoder_pixel_values were given without pixel_values: NIP and CSR need both views.")
        num_images = image_features.image_embeds.shape[0]
        size = self.config.decoder_image_size
        if decoder_pixel_values.ndim != 4 or decoder_pixel_values.shape[:2] != (num_images, 3):
            raise ValueError(
                f"decoder_pixel_values must be (num_images={num_images}, 3, {size}, {size}), "
                f"got shape {tuple(decoder_pixel_values.shape)}"
            )
        if input_ids is None:
            raise ValueError("NIP needs input_ids to find each image's <|startofimage|> context.")
        latents = encode_latents(self.vae, decoder_pixel_values)
        nip_loss = csr_loss = None
        if self.config.csr_loss_weight > 0:
            own = torch.arange(num_images, device=latents.device)
            csr_loss = self._csr_loss(latents, image_features.condition_embeds, image_masks,
                                      self.decoder_image_context(image_features, own))
        if self.config.nip_loss_weight > 0:
            nip_loss = self._nip_loss(latents, hidden, input_ids, attention_mask, image_features, position_ids)
        return nip_loss, csr_loss

    def decoder_image_context(
        self, image_features: DeemImageFeatures | None, indices: torch.LongTensor
    ) -> DecoderImageContext | None:
        """What the UNet's MMFS reads for each UNet sample: image `indices[i]` of `image_features` (−1 = none).
        None when the model has no decoder-side MMFS."""
        if not self.config.decoder_mmfs or image_features is None:
            return None
        features = image_features.decoder_mmfs_features
        if features is None:
            raise ValueError("The UNet's MMFS needs decoder_mmfs_features: encode the images with this model.")
        indices = indices.to(features.device)
        return self.decoder_mmfs.prepare(features[indices.clamp(min=0)],
                                         list(image_features.decoder_mmfs_spatial_shapes), indices >= 0)

    def previous_images(
        self, input_ids: torch.LongTensor, position_ids: torch.LongTensor | None = None
    ) -> torch.LongTensor:
        """For each image slot, the image just before it in the same document (−1 for a document's first):
        what the UNet's MMFS reads when NIP or generation makes that image."""
        rows, starts = image_slots(input_ids, self.config.image_token_id, self.config.num_image_tokens)
        previous = torch.arange(len(rows), device=rows.device) - 1
        if not len(rows):
            return previous
        document_start = document_starts(input_ids, self.config.bos_token_id, position_ids)
        same_row = torch.cat([rows.new_zeros(1, dtype=torch.bool), rows[1:] == rows[:-1]])
        earlier_start = torch.cat([starts.new_full((1,), -1), starts[:-1]])
        same_document = earlier_start > document_start[rows, starts]
        return torch.where(same_row & same_document, previous, -1)

    def _sample_timesteps(self, low: int, high: int, count: int, device: torch.device) -> torch.LongTensor:
        return torch.randint(low, high, (count,), device=device, dtype=torch.long)

    def _csr_loss(
        self, latents: torch.Tensor, condition: torch.Tensor, image_masks: torch.Tensor | None,
        decoder_context: DecoderImageContext | None = None,
    ) -> torch.Tensor:
        """The frozen UNet denoises each image from the image encoder's own tokens (and, with MMFS, its feature
        maps); gradient reaches E_V."""
        low, high = self.config.csr_timestep_range
        timesteps = self._sample_timesteps(low, high, latents.shape[0], latents.device)
        per_image = denoising_loss(self.unet, self.noise_scheduler, latents, condition, timesteps, image_masks,
                                   unet_kwargs=self._decoder_mmfs_kwargs(decoder_context))
        return per_image.mean()

    def _decoder_mmfs_kwargs(self, context: DecoderImageContext | None) -> dict[str, Any]:
        return self.decoder_mmfs.unet_kwargs(context) if context is not None else {}

    def image_contexts(
        self,
        hidden: torch.FloatTensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None = None,
    ) -> tuple[list[torch.Tensor], list[int]]:
        """For each image slot: the LLM states of its document up to and including its `<|startofimage|>`.

        The document starts where `document_starts` says (a BOS, a packed sample's first token, or the first
        attended token), so packed documents never mix, with or without BOS. Returns the contexts and the indices
        of the images that have one: an image with nothing but (`<s>`) `<|startofimage|>` before it (the first
        element of its document) has no NIP target.
        """
        per_image = self.config.num_image_tokens
        first_placeholders = (input_ids == self.config.image_token_id).nonzero()[::per_image]
        bos = self.config.bos_token_id
        document_start = document_starts(input_ids, bos, position_ids, attention_mask).clamp(min=0)
        contexts, kept = [], []
        for index, (row, position) in enumerate(first_placeholders.tolist()):
            soi = position - 1
            if soi < 0 or int(input_ids[row, soi]) != self.config.image_start_token_id:
                raise ValueError(
                    f"Image slot {index} (row {row}, position {position}) is not preceded by <|startofimage|> "
                    f"(id {self.config.image_start_token_id})."
                )
            start = int(document_start[row, soi])
            content = soi - start - int(bos is not None and int(input_ids[row, start]) == bos)
            if content <= 0:
                continue
            contexts.append(hidden[row, start : soi + 1].flip(0))
            kept.append(index)
        return contexts, kept

    def condition_from_contexts(self, contexts: list[torch.Tensor]) -> torch.Tensor:
        """Reversed LLM contexts → `(n, 77, cross_attention_dim)` UNet conditions (the NIP / generation path)."""
        lengths = torch.tensor([len(c) for c in contexts], device=contexts[0].device)
        padded = pad_sequence(contexts, batch_first=True)
        key_mask = (torch.arange(padded.shape[1], device=padded.device)[None] < lengths[:, None]).long()
        positions = sincos_1d(torch.arange(padded.shape[1], device=padded.device), padded.shape[-1])
        tokens = self.context_proj(padded) + positions.to(padded.dtype)
        return self.condition_resampler(tokens, key_mask)

    def _nip_loss(
        self,
        latents: torch.Tensor,
        hidden: torch.FloatTensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        image_features: DeemImageFeatures | None = None,
        position_ids: torch.LongTensor | None = None,
    ) -> torch.Tensor | None:
        """Each image (but the first of a document) is denoised from its preceding context (and, with MMFS, the
        feature maps of the image before it); 10 % condition drop."""
        contexts, kept = self.image_contexts(hidden, input_ids, attention_mask, position_ids)
        if not kept:
            return None
        condition = self.condition_from_contexts(contexts)
        if self.training and self.config.condition_dropout_prob > 0:
            drop = torch.rand(condition.shape[0], device=condition.device) < self.config.condition_dropout_prob
            negative = self.negative_condition.weight.to(condition.dtype).expand_as(condition)
            condition = torch.where(drop[:, None, None], negative, condition)
        low, high = self.config.nip_timestep_range or (0, self.noise_scheduler.config.num_train_timesteps)
        timesteps = self._sample_timesteps(low, high, len(kept), latents.device)
        kept = torch.tensor(kept, device=latents.device)
        context = self.decoder_image_context(image_features, self.previous_images(input_ids, position_ids)[kept])
        return denoising_loss(self.unet, self.noise_scheduler, latents[kept], condition, timesteps,
                              unet_kwargs=self._decoder_mmfs_kwargs(context)).mean()

    # --------------------------------------------------------------------------------- building from parts
    @classmethod
    def from_components(
        cls,
        language_model: str | os.PathLike,
        vision_model: str | None,
        diffusion_model: str | os.PathLike,
        vision_pretrained: str | None = None,
        tokenizer: str | os.PathLike | None = None,
        dtype: torch.dtype | None = None,
        **config_kwargs: Any,
    ) -> DeemForConditionalGeneration:
        """Assemble DEEM from pretrained parts; the resamplers, heads and projectors start fresh.

        language_model: an HF causal LM (hub id or folder). Unless `image_start_token_id`/`image_token_id` are
            given, `<|startofimage|>`, `<|sniffer|>` and (if the tokenizer has none) `<pad>` get the next ids of
            its tokenizer (`tokenizer`, default: the LM's own), exactly as `DeemProcessor.from_base_tokenizer`
            adds them, and the embeddings grow to match.
        vision_model: an open_clip model name whose tower is a timm ConvNeXt (e.g. "convnext_base_w_320");
            `vision_pretrained` is its open_clip pretrained tag or a checkpoint path. None with
            `vision_backbone="diffusion"`.
        diffusion_model: a diffusers Stable Diffusion folder or hub id (unet/, vae/, scheduler/; and
            text_encoder/ + tokenizer/ for a diffusion visual backbone).
        config_kwargs: other `DeemConfig` fields (resampler sizes, loss weights, image sizes, backbone, ...).
        """
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        backbone = config_kwargs.get("vision_backbone", "convnext")
        vision_overrides = config_kwargs.pop("vision_config", None) or {}
        if backbone == "diffusion":
            vision_config, trunk_state = DeemVisionConfig(**vision_overrides), None
        elif vision_model is None:
            raise ValueError(f"vision_backbone={backbone!r} needs an open_clip vision_model.")
        else:
            vision_config, trunk_state = _open_clip_trunk(vision_model, vision_pretrained, vision_overrides)
        lm = AutoModelForCausalLM.from_pretrained(language_model, dtype=dtype)
        unet = UNet2DConditionModel.from_pretrained(diffusion_model, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(diffusion_model, subfolder="vae", torch_dtype=dtype)
        scheduler = DDPMScheduler.from_pretrained(diffusion_model, subfolder="scheduler")

        text_config = lm.config
        if "image_start_token_id" not in config_kwargs and "image_token_id" not in config_kwargs:
            base_tokenizer = AutoTokenizer.from_pretrained(tokenizer or language_model)
            base = len(base_tokenizer)
            config_kwargs.update(image_start_token_id=base, image_token_id=base + 1)
            added = 2
            if base_tokenizer.pad_token is None:
                text_config.pad_token_id = base + 2
                config_kwargs["pad_token_id"] = base + 2
                added = 3
            if base + added > text_config.vocab_size:
                lm.resize_token_embeddings(base + added, mean_resizing=True)
        text_encoder = None
        if backbone != "convnext":
            text_encoder = CLIPTextModel.from_pretrained(diffusion_model, subfolder="text_encoder", dtype=dtype)
            condition_tokenizer = AutoTokenizer.from_pretrained(diffusion_model, subfolder="tokenizer")
            encoder_config = text_encoder.config.to_dict()
            features = dict(config_kwargs.pop("diffusion_features_config", None) or {})
            features.setdefault("text_encoder_config", {
                k: encoder_config[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                               "num_attention_heads", "max_position_embeddings", "hidden_act",
                                               "projection_dim", "layer_norm_eps")})
            features.setdefault("uncond_token_ids", [condition_tokenizer.bos_token_id, condition_tokenizer.eos_token_id])
            features.setdefault("pad_token_id", condition_tokenizer.pad_token_id or condition_tokenizer.eos_token_id)
            config_kwargs["diffusion_features_config"] = features
        resampler = {**VISUAL_RESAMPLER_CONFIG, **(config_kwargs.pop("resampler_config", None) or {}),
                     "encoder_hidden_size": vision_config.hidden_size}
        condition = {**CONDITION_RESAMPLER_CONFIG,
                     **(config_kwargs.pop("condition_resampler_config", None) or {}),
                     "encoder_hidden_size": text_config.hidden_size,
                     "hidden_size": unet.config.cross_attention_dim}
        config = DeemConfig(
            text_config=text_config.to_dict(),
            vision_config=vision_config.to_dict(),
            resampler_config=resampler,
            condition_resampler_config=condition,
            unet_config=dict(unet.config),
            vae_config=dict(vae.config),
            scheduler_config=dict(scheduler.config),
            **config_kwargs,
        )
        model = cls(config)
        missing, unexpected = model.language_model.load_state_dict(lm.state_dict(), strict=False)
        new = [key for key in missing if ".mmfs." not in key]
        if new or unexpected:  # only the MMFS layers DEEM adds may be absent from the pretrained LM
            raise ValueError(f"The language model's weights do not fit DEEM's LLM: missing {new}, unexpected {unexpected}.")
        if trunk_state is not None:
            model.vision_tower.load_trunk_state(trunk_state)
        if text_encoder is not None:
            model.diffusion_text_encoder.load_state_dict(text_encoder.state_dict())
        model.unet.load_state_dict(unet.state_dict())
        model.vae.load_state_dict(vae.state_dict())
        return model.to(dtype) if dtype is not None else model


def _load_processor(folder: Path) -> Any:
    """The processor saved in a model folder: the installed package's `DeemProcessor`, or, when this file runs as
    remote code, the folder's own processor code (the same repository whose model code is running)."""
    try:
        if __package__ == "modeling_deem":
            from processing import DeemProcessor

            return DeemProcessor.from_pretrained(folder)
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    except (OSError, ValueError, ImportError) as error:
        logger.warning(f"Could not load the processor saved in {folder} ({error}); model.processor is None.")
        return None


def _is_2d(mask: torch.Tensor | None) -> bool:
    return mask is not None and mask.ndim == 2


def _is_prefill(past_key_values: Cache | None) -> bool:
    return past_key_values is None or past_key_values.get_seq_length() == 0


def _open_clip_trunk(
    name: str, pretrained: str | None, overrides: dict
) -> tuple[DeemVisionConfig, dict[str, torch.Tensor]]:
    """Build an open_clip model (weights from a tag or a checkpoint file) and take its ConvNeXt trunk."""
    import open_clip

    if name not in open_clip.list_models():
        raise ValueError(f"Unknown vision tower {name!r}: not an open_clip model name (see open_clip.list_models()).")
    vision_cfg = open_clip.get_model_config(name)["vision_cfg"]
    timm_name = vision_cfg.get("timm_model_name")
    if not timm_name or not timm_name.startswith("convnext"):
        raise ValueError(f"Unknown vision tower {name!r}: DEEM needs an open_clip model with a timm ConvNeXt tower.")
    clip = open_clip.create_model(name, pretrained=pretrained)
    trunk = clip.visual.trunk
    config = DeemVisionConfig(
        timm_model_name=timm_name,
        depths=[len(stage.blocks) for stage in trunk.stages],
        dims=[info["num_chs"] for info in trunk.feature_info],
        open_clip_model_name=name,
        open_clip_pretrained=pretrained,
        **overrides,
    )
    return config, trunk.state_dict()


DeemForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
