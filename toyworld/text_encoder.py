"""The toy CLIP's text tower as a transformers `CLIPTextModel`: the toy "Stable Diffusion"'s frozen text encoder.

Stable Diffusion 2.1 reads its captions through OpenCLIP's pretrained text tower and never trains it. The toy SD can
do the same with the toy CLIP's: the weights are copied unchanged into the layout `StableDiffusionPipeline` loads
(diffusers' OpenCLIP conversion), so the pipeline folder stays a standard diffusers one. Trained jointly from
scratch, the SD's own text encoder tells shape words apart far less than colour words; this tower separates both,
though at 2,000 UNet steps it drew no better (the UNet's training length was what mattered: docs/TOY_WORLD.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
from transformers import CLIPTextConfig, CLIPTextModel

from .clip import load as load_clip

# open_clip's activation classes -> transformers' names for the same functions
ACTIVATIONS = {"GELU": "gelu", "QuickGELU": "quick_gelu"}


def _text_config(model: torch.nn.Module, bos_token_id: int, eos_token_id: int, pad_token_id: int) -> CLIPTextConfig:
    """A `CLIPTextConfig` of the same shape as the open_clip text tower, or a clear error where none exists."""
    blocks = model.transformer.resblocks
    first = blocks[0]
    if model.attn_mask is None:
        raise ValueError("The CLIP's text tower has no causal mask; CLIPTextModel always applies one.")
    if not all(isinstance(b.ls_1, torch.nn.Identity) and isinstance(b.ls_2, torch.nn.Identity) for b in blocks):
        raise ValueError("The CLIP's text tower uses layer scale, which CLIPTextModel does not have.")
    activation = type(first.mlp.gelu).__name__
    if activation not in ACTIVATIONS:
        raise ValueError(f"The CLIP's text tower uses {activation}; CLIPTextModel supports {sorted(ACTIVATIONS)}.")
    return CLIPTextConfig(
        vocab_size=model.token_embedding.num_embeddings, hidden_size=model.token_embedding.embedding_dim,
        intermediate_size=first.mlp.c_fc.out_features, num_hidden_layers=len(blocks),
        num_attention_heads=first.attn.num_heads, max_position_embeddings=model.positional_embedding.shape[0],
        hidden_act=ACTIVATIONS[activation], layer_norm_eps=first.ln_1.eps, bos_token_id=bos_token_id,
        eos_token_id=eos_token_id, pad_token_id=pad_token_id)


def clip_text_encoder(clip_folder: str | Path, bos_token_id: int = 1, eos_token_id: int = 2,
                      pad_token_id: int = 3) -> CLIPTextModel:
    """The text tower of the toy CLIP saved in `clip_folder`, as a frozen `CLIPTextModel` whose `last_hidden_state`
    equals open_clip's token features after `ln_final` (before pooling and projection)."""
    if not (Path(clip_folder) / "open_clip_config.json").is_file():
        raise FileNotFoundError(f"{clip_folder} holds no toy CLIP (no open_clip_config.json; make one with "
                                f"`python -m toyworld.clip --output-dir {clip_folder}`).")
    model, _, _ = load_clip(clip_folder)
    encoder = CLIPTextModel(_text_config(model, bos_token_id, eos_token_id, pad_token_id))
    # diffusers' own OpenCLIP -> CLIPTextModel mapping (the one its single-file SD 2 loading uses); its keys carry
    # the `text_model.` prefix transformers 5 no longer has, and the projection SD never reads
    converted = convert_open_clip_checkpoint(encoder, model.state_dict(), prefix="")
    weights = {key.removeprefix("text_model."): value for key, value in converted.items()
               if key != "text_projection.weight"}
    missing, unexpected = encoder.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"Converting the CLIP's text tower left missing {missing} / unexpected {unexpected} weights.")
    return encoder.eval().requires_grad_(False)
