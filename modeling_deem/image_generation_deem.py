"""Image output for DEEM: sampling through a diffusers pipeline made of the model's own UNet, VAE and scheduler.

`generate(generation_mode="image")` conditions on the LLM context (NIP path), `reconstruct_images` on the image
encoder's own tokens (CSR path, the paper's Figure 9), and `generate_interleaved` continues a document with text
and images. Exported as remote code: flat, sibling imports only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from .diffusion_losses_deem import reversed_spans
from .mmfs_language import document_starts, image_visibility
from .mmfs_unet import DecoderImageContext, UNetWithImageFeatures

# The paper's sampling defaults (DESIGN.md section 4): DDPM, 250 steps, guidance 3.5.
DEFAULT_INFERENCE_STEPS = 250
DEFAULT_GUIDANCE_SCALE = 3.5


class DeemImageGenerationMixin:
    """Mixed into `DeemForConditionalGeneration`; relies on its UNet, VAE, resamplers and LLM pass."""

    @property
    def sampling_scheduler(self) -> SchedulerMixin:
        """DDPM from the training noise schedule unless replaced, e.g.
        `model.sampling_scheduler = DPMSolverMultistepScheduler.from_config(model.noise_scheduler.config)`."""
        if getattr(self, "_sampling_scheduler", None) is None:
            self._sampling_scheduler = DDPMScheduler.from_config(self.noise_scheduler.config)
        return self._sampling_scheduler

    @sampling_scheduler.setter
    def sampling_scheduler(self, scheduler: SchedulerMixin) -> None:
        self._sampling_scheduler = scheduler

    @property
    def image_pipeline(self) -> StableDiffusionPipeline:
        """A diffusers pipeline over the model's own modules (no text encoder: conditions come from DEEM)."""
        return self._image_pipeline()

    def _image_pipeline(self, decoder_context: DecoderImageContext | None = None) -> StableDiffusionPipeline:
        """With a decoder context, the pipeline's UNet also reads those images through the UNet-side MMFS."""
        self._require_image_decoder("Image generation")
        unet = self.unet
        if decoder_context is not None and bool(decoder_context.has_image.any()):
            unet = UNetWithImageFeatures(self.unet, self.decoder_mmfs, decoder_context)
        pipeline = StableDiffusionPipeline(
            vae=self.vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=self.sampling_scheduler,
            safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    @torch.no_grad()
    def sample_images(
        self,
        condition: torch.Tensor,
        num_inference_steps: int = DEFAULT_INFERENCE_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        show_progress: bool = False,
        decoder_context: DecoderImageContext | None = None,
    ) -> list[Image.Image] | torch.Tensor:
        """Condition `(n, 77, cross_attention_dim)` → n images; the learned negative is the unconditional branch.
        `decoder_context`: the image each sample's UNet-side MMFS reads (`decoder_image_context`)."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a whole number ≥ 1, got {num_inference_steps!r}.")
        pipeline = self._image_pipeline(decoder_context)
        pipeline.set_progress_bar_config(disable=not show_progress)
        size = self.config.decoder_image_size
        negative = self.negative_condition.weight.to(condition.dtype).expand_as(condition)
        result = pipeline(
            prompt_embeds=condition, negative_prompt_embeds=negative, height=size, width=size,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator,
            output_type=output_type,
        )
        return result.images

    def generate(self, *args: Any, generation_mode: str = "text", **kwargs: Any) -> Any:
        """`generation_mode="text"` (default): transformers' generate. `"image"`: images from the prompt context."""
        if generation_mode == "text":
            return super().generate(*args, **kwargs)
        if generation_mode == "image":
            return self.generate_images(*args, **kwargs)
        raise ValueError(f"generation_mode must be 'text' or 'image', got {generation_mode!r}")

    def prompt_conditions(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_masks: torch.Tensor | None = None,
        with_grad: bool = False,
        **image_inputs: Any,
    ) -> torch.Tensor:
        """One UNet condition per row, from the row's document up to a final `<|startofimage|>` (added if absent).

        Rows must be left-padded (or unpadded) so that each ends at the last column. `image_inputs`: the
        diffusion backbone's inputs for images in the prompt (`diffusion_pixel_values`, `condition_input_ids`, ...).
        `with_grad=True` keeps autograd on (training the condition mapper, `trainers.condition_alignment`);
        otherwise no graph is built.
        """
        with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
            return self._prompt_state(input_ids, attention_mask, pixel_values, image_masks, **image_inputs)[0]

    def _prompt_state(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_masks: torch.Tensor | None = None,
        **image_inputs: Any,
    ) -> tuple[torch.Tensor, DecoderImageContext | None]:
        """The UNet conditions of `prompt_conditions` and what the UNet's MMFS reads: each row's last image in
        the document being continued (none if it has no image yet)."""
        soi = self.config.image_start_token_id
        if attention_mask is not None and not bool(attention_mask[:, -1].all()):
            raise ValueError("Image generation needs left-padded prompts (every row must end at the last column).")
        if not bool((input_ids[:, -1] == soi).all()):
            if bool((input_ids[:, -1] == soi).any()):
                raise ValueError("Some prompts end with <|startofimage|> and some do not; make them agree.")
            input_ids = torch.cat([input_ids, input_ids.new_full((input_ids.shape[0], 1), soi)], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], 1)
        outputs, image_features = self._run_language_model(input_ids, attention_mask, pixel_values, image_masks,
                                                           use_cache=False, image_inputs=image_inputs)
        return self._next_image_state(input_ids, outputs.last_hidden_state, attention_mask, image_features)

    def _next_image_state(
        self,
        input_ids: torch.LongTensor,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        image_features: Any,
    ) -> tuple[torch.Tensor, DecoderImageContext | None]:
        """From the LLM's last states of whole rows ending in `<|startofimage|>`: the UNet condition (the row's
        document, reversed) and what the UNet's MMFS reads (the document's latest image)."""
        last = input_ids.shape[1] - 1
        starts = document_starts(input_ids, self.config.bos_token_id, None, attention_mask)[:, last].clamp(min=0)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        states, lengths = reversed_spans(hidden, rows, torch.full_like(starts, last), starts)
        decoder_context = None
        if image_features is not None and self.config.decoder_mmfs:
            table, visible = image_visibility(input_ids, 1, self.config.image_token_id, self.config.num_image_tokens,
                                              self.config.bos_token_id)
            latest = torch.where(visible[:, 0], table, -1).max(-1).values  # image indices grow along a row
            decoder_context = self.decoder_image_context(image_features, latest)
        return self.condition_from_contexts(states, lengths), decoder_context

    @torch.no_grad()
    def generate_images(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_masks: torch.Tensor | None = None,
        num_inference_steps: int = DEFAULT_INFERENCE_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        show_progress: bool = False,
        **image_inputs: Any,
    ) -> list[Image.Image] | torch.Tensor:
        """The next image of each prompt (the NIP path): PIL images, or a tensor in [0, 1] with output_type="pt"."""
        self._require_image_decoder("generation_mode='image'")
        condition, context = self._prompt_state(input_ids, attention_mask, pixel_values, image_masks, **image_inputs)
        return self.sample_images(condition, num_inference_steps, guidance_scale, generator, output_type,
                                  show_progress, decoder_context=context)

    @torch.no_grad()
    def reconstruct_images(
        self,
        pixel_values: torch.FloatTensor,
        image_masks: torch.Tensor | None = None,
        num_inference_steps: int = DEFAULT_INFERENCE_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
    ) -> list[Image.Image] | torch.Tensor:
        """Images rebuilt from the image encoder's own CSR condition: what the encoder's tokens carry."""
        self._require_image_decoder("reconstruct_images")
        features = self.get_image_features(pixel_values, image_masks, return_dict=True)
        context = self.decoder_image_context(features, torch.arange(pixel_values.shape[0], device=pixel_values.device))
        return self.sample_images(features.condition_embeds, num_inference_steps, guidance_scale, generator,
                                  output_type, decoder_context=context)

    def encoder_view(self, images: torch.Tensor) -> torch.Tensor:
        """Generated images in [0, 1] `(n, 3, h, w)` → encoder inputs (resized, CLIP-normalised)."""
        vision = self.config.vision_config
        size = vision.image_size
        resized = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        mean = torch.tensor(vision.image_mean, device=images.device)[:, None, None]
        std = torch.tensor(vision.image_std, device=images.device)[:, None, None]
        return (resized - mean) / std

    @torch.no_grad()
    def generate_interleaved(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        max_new_tokens: int = 64,
        max_images: int = 2,
        num_inference_steps: int = DEFAULT_INFERENCE_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        generator: torch.Generator | None = None,
        **text_kwargs: Any,
    ) -> list[torch.LongTensor | Image.Image]:
        """Continue one document: text until `<|startofimage|>`, then an image that is fed back as an input
        image, and on, until EOS, `max_new_tokens` text tokens or `max_images` images.

        Nothing is computed twice: the KV cache carries over from segment to segment (each new image's slot is
        the only prefill after the first), every image is encoded once, and the image condition is read from the
        states the text generation already produced. Returns the new parts in order: token-id tensors (decode
        with the tokenizer) and PIL images.
        """
        if input_ids.shape[0] != 1:
            raise ValueError(f"generate_interleaved continues one document at a time, got a batch of {input_ids.shape[0]}.")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("generate_interleaved continues one unpadded document: its attention mask must be all ones.")
        soi, eos = self.config.image_start_token_id, self.config.eos_token_id
        stops = [soi] + (list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        features = self.get_image_features(pixel_values, return_dict=True) if pixel_values is not None else None
        parts: list[torch.LongTensor | Image.Image] = []
        budget, images_made, cache, states = max_new_tokens, 0, None, []
        while budget > 0:
            extra = {"mm_encoder_outputs": {"image": features}} if features is not None else {}
            if cache is not None:
                extra["past_key_values"] = cache
            out = super().generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                   max_new_tokens=budget, eos_token_id=stops, return_dict_in_generate=True,
                                   output_hidden_states=True, **extra, **text_kwargs)
            generated, cache = out.sequences, out.past_key_values
            states += [step[-1] for step in out.hidden_states]  # the last layer's states of every token fed
            new = generated[0, input_ids.shape[1]:]
            budget -= len(new)
            ends_with_image = len(new) > 0 and int(new[-1]) == soi
            text = new[:-1] if len(new) and int(new[-1]) in stops else new
            if len(text):
                parts.append(text)
            input_ids = generated
            if not ends_with_image or images_made >= max_images:
                break
            # Feed the <|startofimage|> once: its state ends the image's context, and the cache then holds it.
            step, _ = self._run_language_model(
                input_ids[:, -1:], torch.ones_like(input_ids), None, None, past_key_values=cache, use_cache=True,
                mm_encoder_outputs=features, image_layout_ids=input_ids)
            states.append(step.last_hidden_state)
            condition, context = self._next_image_state(input_ids, torch.cat(states, dim=1), None, features)
            image = self.sample_images(condition, num_inference_steps, guidance_scale, generator, "pt",
                                       decoder_context=context)
            parts.append(_to_pil(image[0]))
            images_made += 1
            view = self.get_image_features(self.encoder_view(image.to(self.device)).to(self.dtype), return_dict=True)
            features = view if features is None else concat_image_features(features, view)
            placeholders = input_ids.new_full((1, self.config.num_image_tokens), self.config.image_token_id)
            input_ids = torch.cat([input_ids, placeholders], dim=1)
        return parts


def concat_image_features(first: Any, second: Any) -> Any:
    """Two `DeemImageFeatures` of consecutive images as one: per-image tensors concatenated, the rest kept."""
    return first.concat_images(second)


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)
