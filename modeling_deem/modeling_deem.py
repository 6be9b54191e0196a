"""DEEM as a transformers model: image encoder + resampler → causal LM, and a frozen diffusers decoder that
adds the next-image (NIP) and consistency (CSR) losses.

Exported as remote code: import siblings only with ``from .x import Y``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    CLIPTextConfig,
    CLIPTextModel,
    GenerationMixin,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, logging

from .checkpoints_deem import DeemCheckpointMixin
from .components_deem import DeemComponentsMixin
from .configuration_deem import DeemConfig
from .diffusion_deem import build_noise_scheduler, build_unet, build_vae
from .diffusion_features_deem import DiffusionFeatureExtractor
from .diffusion_losses_deem import DeemDiffusionLossMixin
from .image_generation_deem import DeemImageGenerationMixin
from .mmfs_language import ImageMemory, add_mmfs_layers, image_slots, image_visibility
from .mmfs_unet import DeemDecoderMMFS
from .resampler_deem import DeemResampler
from .vision_deem import DeemVisionTower

logger = logging.get_logger(__name__)
TIMM_LAYER_SCALE_INIT = 1e-6  # timm's ConvNeXt `ls_init_value`


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

    def select_images(self, index: torch.LongTensor) -> DeemImageFeatures:
        """A new object holding the images `index` picks, in its order (repeats allowed): every per-image field
        (tensors, and tuples of tensors such as `hidden_states`) alike; this one is left as it is."""
        count = self.last_hidden_state.shape[0]

        def pick(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == count:
                return value[index.to(value.device)]
            if isinstance(value, tuple) and value and all(isinstance(v, torch.Tensor) for v in value):
                return tuple(pick(v) for v in value)
            return value

        return type(self)(**{key: pick(value) for key, value in self.items()})

    def concat_images(self, other: DeemImageFeatures) -> DeemImageFeatures:
        """A new object holding this one's images, then `other`'s: per-image tensors concatenated (tuples of
        them element by element), the rest (spatial shapes) kept from this one."""

        def join(value: Any, more: Any) -> Any:
            if isinstance(value, torch.Tensor) and more is not None:
                return torch.cat([value, more])
            if (isinstance(value, tuple) and isinstance(more, tuple) and len(value) == len(more)
                    and all(isinstance(v, torch.Tensor) for v in value + more)):
                return tuple(torch.cat([v, m]) for v, m in zip(value, more))
            return value

        return type(self)(**{key: join(value, other.get(key)) for key, value in self.items()})


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


class DeemForConditionalGeneration(
    DeemCheckpointMixin, DeemDiffusionLossMixin, DeemComponentsMixin, DeemImageGenerationMixin, DeemPreTrainedModel, GenerationMixin
):
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
        # The columns the new-token head adds to (a buffer: follows `.to(device)`, not saved; set again in
        # `_initialize_weights`, as from_pretrained leaves non-persistent buffers empty).
        self.register_buffer("new_token_index", torch.tensor(config.new_token_ids, dtype=torch.long), persistent=False)
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
        # The authors' MMFS init (zero gates and convolutions, spread offsets), applied when the whole model is
        # initialised (see _init_weights): the LLM's layers, MMFS included, are visited by the LLM's own init first.
        self._mmfs_modules = mmfs_modules
        self.post_init()

    # ----------------------------------------------------------------------------------------------- plumbing
    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """transformers' activation (gradient) checkpointing, always non-reentrant with MMFS: the MMFS layers read
        the images' maps through a keyword argument, which reentrant checkpointing does not track (it would
        backpropagate through the image encoder twice). Non-reentrant is PyTorch's recommended mode."""
        kwargs = dict(activation_checkpointing_kwargs or {})
        if self.config.mmfs:
            if kwargs.get("use_reentrant"):
                logger.warning_once("use_reentrant=True cannot track MMFS's image maps; checkpointing with "
                                    "use_reentrant=False instead.")
            kwargs["use_reentrant"] = False
        super().activation_checkpointing_enable(kwargs or None, every_n_layers, offload)

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        """transformers visits children before parents, so the model itself comes last: MMFS gets its authors'
        init there, after the LLM's own init has visited the LLM's layers (MMFS included). Done before
        transformers' check, which skips a module without parameters of its own. The `init` functions skip
        loaded weights, so only missing ones are (re)initialised when loading."""
        if module is self:
            for mmfs in getattr(self, "_mmfs_modules", ()):
                mmfs.reset_parameters()
            init.copy_(self.new_token_index, torch.tensor(self.config.new_token_ids, dtype=torch.long))
        super()._initialize_weights(module, is_custom_code)

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' init, except: the ConvNeXt, UNet and VAE keep their libraries' own (and MMFS its
        authors', see `_initialize_weights`)."""
        std = self.config.initializer_range
        if id(module) in getattr(self, "_native_init_ids", ()):
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if isinstance(getattr(module, "gamma", None), nn.Parameter):
                init.constant_(module.gamma, TIMM_LAYER_SCALE_INIT)  # timm's ConvNeXt layer scale
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
        output_hidden_states = kwargs.get("output_hidden_states")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        tokens, maps, hidden_states = [], {}, None
        if hasattr(self, "vision_tower"):
            resampler_tokens, level_tokens, level_shapes, hidden_states = self.vision_tower(
                pixel_values, image_masks, output_hidden_states=bool(output_hidden_states))
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
            hidden_states=hidden_states,
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
            input_ids = self.token_layout(inputs_embeds)
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
            never targets. `shift_labels` (in kwargs): targets already shifted by one, same rule.
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
        shift_labels = kwargs.pop("shift_labels", None)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        token_ids = input_ids
        if token_ids is None:  # embeddings only: DEEM's tokens are found in them (see token_layout)
            whole = image_layout_ids is not None and image_layout_ids.shape[1] == inputs_embeds.shape[1]
            token_ids = image_layout_ids if whole else self.token_layout(inputs_embeds)
        outputs, image_features = self._run_language_model(
            token_ids, attention_mask, pixel_values, image_masks, position_ids, past_key_values, inputs_embeds,
            mm_encoder_outputs=mm_encoder_outputs, use_cache=use_cache, image_layout_ids=image_layout_ids,
            image_inputs={"diffusion_pixel_values": diffusion_pixel_values, "condition_input_ids": condition_input_ids,
                          "condition_attention_mask": condition_attention_mask}, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.output_logits(hidden[:, keep, :])

        ntp_loss = nip_loss = csr_loss = None
        if shift_labels is not None:  # targets already shifted (sequence / context parallel training)
            ignored = torch.zeros_like(shift_labels, dtype=torch.bool)
            ignored[:, :-1] = self.ntp_ignored(token_ids)[:, 1:]
            ntp_loss = self.language_model.loss_function(
                logits=logits, labels=None, shift_labels=shift_labels.masked_fill(ignored, -100),
                vocab_size=self.config.text_config.vocab_size)
        elif labels is not None:
            labels = self.ntp_labels(labels, token_ids)
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
                decoder_pixel_values, image_features, image_masks, hidden, token_ids, attention_mask, position_ids
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
        # In place: the head's backward does not need its output, so autograd allows it (no copy of the logits).
        return logits.index_add_(-1, self.new_token_index.to(logits.device),
                                 self.new_token_head(hidden).to(logits.dtype))

    def ntp_ignored(self, input_ids: torch.LongTensor) -> torch.BoolTensor:
        """Tokens that are never NTP targets (the original's rule): an image placeholder, a `<s>`, or a
        `<|startofimage|>` right after `<s>` (a document that opens with an image says nothing about when to
        start one)."""
        ignored = input_ids == self.config.image_token_id
        bos = self.config.bos_token_id
        if bos is not None:
            after_bos = torch.zeros_like(ignored)
            after_bos[:, 1:] = (input_ids[:, :-1] == bos) & (input_ids[:, 1:] == self.config.image_start_token_id)
            ignored |= (input_ids == bos) | after_bos
        return ignored

    def ntp_labels(self, labels: torch.LongTensor, input_ids: torch.LongTensor) -> torch.LongTensor:
        """`labels` with the tokens `ntp_ignored` names masked out."""
        return labels.masked_fill(self.ntp_ignored(input_ids), -100)

    def token_layout(self, inputs_embeds: torch.FloatTensor) -> torch.LongTensor:
        """`(B, T)` ids of DEEM's own tokens (image placeholders, `<|startofimage|>`, `<s>`) found in embeddings
        given without `input_ids`, by equality with their embedding rows (as `get_placeholder_mask` finds the
        images); every other position is −1. What MMFS, the start vector and the losses read from the ids."""
        table = self.get_input_embeddings()
        layout = torch.full(inputs_embeds.shape[:2], -1, dtype=torch.long, device=inputs_embeds.device)
        for token in (self.config.image_token_id, self.config.image_start_token_id, self.config.bos_token_id):
            if token is not None:
                row = table(torch.tensor(token, device=inputs_embeds.device)).to(inputs_embeds.dtype)
                layout[(inputs_embeds == row).all(-1)] = token
        return layout

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
        read the images' feature maps. `input_ids` may come with `inputs_embeds` (then it only says where DEEM's
        tokens are: `token_layout`)."""
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if input_ids is not None and input_ids.shape[1] == inputs_embeds.shape[1]:
            starts = (input_ids == self.config.image_start_token_id).unsqueeze(-1)
            inputs_embeds = inputs_embeds + starts.to(inputs_embeds.dtype) * self.image_start_embedding.weight[0].to(
                inputs_embeds.dtype)
        if isinstance(mm_encoder_outputs, dict) and not isinstance(mm_encoder_outputs, ModelOutput):
            mm_encoder_outputs = mm_encoder_outputs.get("image")
        image_features = mm_encoder_outputs
        if image_features is None and pixel_values is not None:
            image_features = self.get_image_features(pixel_values, image_masks, return_dict=True, **(image_inputs or {}))
        # A cached step holds only the newest tokens of the rows (`image_layout_ids`): only the images whose slots
        # lie in it are spliced (none for a text token; a new image's slot when a document continues after it).
        continuing = (image_layout_ids is not None and input_ids is not None
                      and image_layout_ids.shape[1] > inputs_embeds.shape[1])
        image_embeds = None if image_features is None else image_features.image_embeds
        if image_embeds is not None and continuing:
            if inputs_embeds.shape[1] < self.config.num_image_tokens:
                image_embeds = None  # too short to hold a slot: a text step
            else:
                _, slot_starts = image_slots(image_layout_ids, self.config.image_token_id, self.config.num_image_tokens)
                image_embeds = image_embeds[slot_starts >= image_layout_ids.shape[1] - inputs_embeds.shape[1]]
        if image_embeds is not None and (not continuing or len(image_embeds)):
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_embeds.shape[0])
            image_embeds = image_embeds.to(inputs_embeds.dtype).reshape(-1, inputs_embeds.shape[-1])
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

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        **kwargs: Any,
    ) -> dict:
        """transformers' inputs, plus what MMFS needs at every cached step: the encoded images (generate drops
        them after the prefill) and the whole rows so far (`image_layout_ids`). A prompt given as embeddings
        (`input_ids` then holds only the new tokens) has its layout read once, at the prefill, and kept with
        the encoded images."""
        inputs = super().prepare_inputs_for_generation(
            input_ids, past_key_values=past_key_values, inputs_embeds=inputs_embeds, **kwargs)
        encoded = kwargs.get("mm_encoder_outputs")
        if self.config.mmfs and encoded:
            inputs.setdefault("mm_encoder_outputs", encoded)
        # Whenever encoded images go in (MMFS or not): a continuing chunk (a new image's slot after earlier
        # images) splices only its own image, which `_run_language_model` finds from the whole rows.
        if encoded and inputs.get("mm_encoder_outputs"):
            layout = input_ids
            image = encoded.get("image") if isinstance(encoded, dict) else encoded
            if image is not None and _is_prefill(past_key_values):
                # Set at every prefill (a layout left by an earlier call must not leak into this one).
                # Embeddings without the prompt's ids (`input_ids` shorter than the prompt): read the layout.
                ids_cover_prompt = inputs_embeds is None or input_ids.shape[1] >= inputs_embeds.shape[1]
                image.__dict__["_prompt_layout"] = None if ids_cover_prompt else self.token_layout(inputs_embeds)
            prompt_layout = image.__dict__.get("_prompt_layout") if image is not None else None
            if prompt_layout is not None:
                layout = torch.cat([prompt_layout, input_ids], dim=1)
            inputs["image_layout_ids"] = layout
        return inputs

    def _expand_multimodal_outputs(
        self, input_ids: torch.LongTensor, mm_encoder_output: dict, expand_size: int = 1,
        inputs_embeds: torch.Tensor | None = None,
    ) -> dict:
        """Beam search / several return sequences: each row's images repeated as a block, every per-image field
        (LLM tokens, CSR condition, MMFS maps) alike."""
        features = mm_encoder_output.get("image")
        layout = input_ids
        if inputs_embeds is not None and (input_ids is None or input_ids.shape[1] < inputs_embeds.shape[1]):
            layout = self.token_layout(inputs_embeds)  # a prompt given as embeddings only
        if features is None or expand_size == 1 or layout is None:
            return super()._expand_multimodal_outputs(input_ids, mm_encoder_output, expand_size, inputs_embeds)
        rows, _ = image_slots(layout, self.config.image_token_id, self.config.num_image_tokens)
        order = torch.cat([torch.nonzero(rows == row)[:, 0] for row in range(layout.shape[0])
                           for _ in range(expand_size)])
        # New objects: the caller's features (encoded once, maybe for several calls) stay as they were.
        return {**mm_encoder_output, "image": features.select_images(order)}

def _is_prefill(past_key_values: Cache | None) -> bool:
    return past_key_values is None or past_key_values.get_seq_length() == 0


DeemForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
