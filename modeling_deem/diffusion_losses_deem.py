"""DEEM's diffusion losses: NIP (each image denoised from the LLM's context before it) and CSR (each image
denoised from the image encoder's own tokens), with the UNet's MMFS reading the right image for each.

Exported as remote code: import siblings only with ``from .x import Y``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .diffusion_deem import denoising_error, encode_latents, noised_latents
from .mmfs_language import document_starts, image_slots
from .mmfs_unet import DecoderImageContext
from .positional_embeddings import sincos_1d

if TYPE_CHECKING:
    from .modeling_deem import DeemImageFeatures


@dataclass
class DenoisingPart:
    """One loss's UNet samples, noised: inputs, targets, timesteps, conditions, region weights (or None) and the
    image each sample's UNet-side MMFS reads (−1: none)."""

    noisy: torch.Tensor
    target: torch.Tensor
    timesteps: torch.Tensor
    condition: torch.Tensor
    weights: torch.Tensor | None
    images: torch.LongTensor

    @property
    def size(self) -> int:
        return self.noisy.shape[0]


def reversed_spans(
    hidden: torch.Tensor, rows: torch.LongTensor, ends: torch.LongTensor, starts: torch.LongTensor
) -> tuple[torch.Tensor, torch.LongTensor]:
    """`hidden[row, end], hidden[row, end - 1], …, hidden[row, start]` for each (row, end, start), gathered in one
    indexing op and zero-padded: `(n, L, H)` and the lengths `(n,)`."""
    lengths = ends - starts + 1
    width = int(lengths.max()) if len(lengths) else 0
    offsets = torch.arange(width, device=hidden.device)
    gathered = hidden[rows[:, None], (ends[:, None] - offsets[None]).clamp(min=0)]
    valid = (offsets[None] < lengths[:, None])[..., None]
    return torch.where(valid, gathered, torch.zeros((), dtype=hidden.dtype, device=hidden.device)), lengths


class DeemDiffusionLossMixin:
    """What `DeemForConditionalGeneration` adds to its forward when decoder views are given (training)."""

    def _diffusion_losses(
        self,
        decoder_pixel_values: torch.FloatTensor,
        image_features: DeemImageFeatures | None,
        image_masks: torch.Tensor | None,
        hidden: torch.FloatTensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """NIP and CSR. `input_ids`: the token ids, or, for embeddings, their `token_layout` (forward always
        passes one)."""
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
        contexts = None
        if self.config.nip_loss_weight > 0:
            contexts = self.image_contexts(hidden, input_ids, attention_mask, position_ids)
        has_nip = contexts is not None and len(contexts[2]) > 0
        if self.config.csr_loss_weight <= 0 and not has_nip:
            return None, None  # nothing to denoise: the VAE does not run
        latents = encode_latents(self.vae, decoder_pixel_values)
        # Noise is drawn part by part (CSR, then NIP) in the same order whether the UNet runs once or twice.
        parts: dict[str, DenoisingPart] = {}
        if self.config.csr_loss_weight > 0:
            parts["csr"] = self._csr_part(latents, image_features.condition_embeds, image_masks)
        if has_nip:
            parts["nip"] = self._nip_part(latents, contexts, input_ids, position_ids)
        groups = [list(parts)] if self.config.fuse_diffusion_losses else [[name] for name in parts]
        losses: dict[str, torch.Tensor] = {}
        for names in groups:
            errors = self._denoise([parts[name] for name in names], image_features)
            for name, error in zip(names, errors.split([parts[name].size for name in names])):
                losses[name] = error.mean()
        return losses.get("nip"), losses.get("csr")

    def _denoise(self, parts: list[DenoisingPart], image_features: DeemImageFeatures | None) -> torch.Tensor:
        """One UNet call over the parts' samples (per-sample errors, in order). Region weights: the parts'
        masks, 1 where a part has none."""
        weights = None
        if any(part.weights is not None for part in parts):
            reference = next(part.weights for part in parts if part.weights is not None)
            weights = torch.cat([part.weights if part.weights is not None
                                 else reference.new_ones((part.size, *reference.shape[1:])) for part in parts])
        context = self.decoder_image_context(image_features, torch.cat([part.images for part in parts]))
        return denoising_error(
            self.unet, torch.cat([part.noisy for part in parts]), torch.cat([part.target for part in parts]),
            torch.cat([part.timesteps for part in parts]), torch.cat([part.condition for part in parts]),
            weights, unet_kwargs=self._decoder_mmfs_kwargs(context))

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

    def _csr_part(
        self, latents: torch.Tensor, condition: torch.Tensor, image_masks: torch.Tensor | None
    ) -> DenoisingPart:
        """CSR: the frozen UNet denoises each image from the image encoder's own tokens (and, with MMFS, its own
        feature maps); gradient reaches E_V."""
        low, high = self.config.csr_timestep_range
        timesteps = self._sample_timesteps(low, high, latents.shape[0], latents.device)
        noisy, target = noised_latents(self.noise_scheduler, latents, timesteps)
        own = torch.arange(latents.shape[0], device=latents.device)
        return DenoisingPart(noisy, target, timesteps, condition, image_masks, own)

    def _decoder_mmfs_kwargs(self, context: DecoderImageContext | None) -> dict[str, Any]:
        return self.decoder_mmfs.unet_kwargs(context) if context is not None else {}

    def image_contexts(
        self,
        hidden: torch.FloatTensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.LongTensor, torch.LongTensor]:
        """For each image slot with a context: the LLM states of its document from its `<|startofimage|>` back to
        the document's start, found with tensor ops (no per-image loop or host sync but one for the width).

        The document starts where `document_starts` says (a BOS, a packed sample's first token, or the first
        attended token), so packed documents never mix, with or without BOS. An image with nothing but (`<s>`)
        `<|startofimage|>` before it (the first element of its document) has no NIP target. Returns the states
        `(n, L, H)` (zero-padded), their lengths `(n,)` and the indices of the images that have a context `(n,)`.
        """
        rows, first = image_slots(input_ids, self.config.image_token_id, self.config.num_image_tokens)
        soi = first - 1
        bad = (soi < 0) | (input_ids[rows, soi.clamp(min=0)] != self.config.image_start_token_id)
        if bad.any():
            index = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"Image slot {index} (row {int(rows[index])}, position {int(first[index])}) is not preceded by "
                f"<|startofimage|> (id {self.config.image_start_token_id})."
            )
        bos = self.config.bos_token_id
        start = document_starts(input_ids, bos, position_ids, attention_mask).clamp(min=0)[rows, soi]
        content = soi - start
        if bos is not None:
            content = content - (input_ids[rows, start] == bos).long()
        kept = (content > 0).nonzero()[:, 0]
        states, lengths = reversed_spans(hidden, rows[kept], soi[kept], start[kept])
        return states, lengths, kept

    def condition_from_contexts(self, states: torch.Tensor, lengths: torch.LongTensor) -> torch.Tensor:
        """Reversed, zero-padded LLM contexts `(n, L, H)` of `lengths` → `(n, 77, cross_attention_dim)` UNet
        conditions (the NIP / generation path)."""
        key_mask = (torch.arange(states.shape[1], device=states.device)[None] < lengths[:, None]).long()
        positions = sincos_1d(torch.arange(states.shape[1], device=states.device), states.shape[-1])
        tokens = self.context_proj(states) + positions.to(states.dtype)
        return self.condition_resampler(tokens, key_mask)

    def _nip_part(
        self,
        latents: torch.Tensor,
        contexts: tuple[torch.Tensor, torch.LongTensor, torch.LongTensor],
        input_ids: torch.LongTensor,
        position_ids: torch.LongTensor | None = None,
    ) -> DenoisingPart:
        """NIP: each image with a context (`image_contexts`: all but a document's first) is denoised from it (and,
        with MMFS, the feature maps of the image before it); 10 % condition drop."""
        states, lengths, kept = contexts
        condition = self.condition_from_contexts(states, lengths)
        if self.training and self.config.condition_dropout_prob > 0:
            drop = torch.rand(condition.shape[0], device=condition.device) < self.config.condition_dropout_prob
            negative = self.negative_condition.weight.to(condition.dtype).expand_as(condition)
            condition = torch.where(drop[:, None, None], negative, condition)
        low, high = self.config.nip_timestep_range or (0, self.noise_scheduler.config.num_train_timesteps)
        timesteps = self._sample_timesteps(low, high, len(kept), latents.device)
        kept = kept.to(latents.device)
        noisy, target = noised_latents(self.noise_scheduler, latents[kept], timesteps)
        return DenoisingPart(noisy, target, timesteps, condition, None, self.previous_images(input_ids, position_ids)[kept])
