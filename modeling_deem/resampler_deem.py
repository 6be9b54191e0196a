"""Perceiver-style resamplers built on transformers' Q-Former: learned queries cross-attend to a token set."""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel


class DeemResampler(nn.Module):
    """`num_queries` learned queries read a variable-length token set through a `Blip2QFormerModel`.

    Used twice: the visual resampler (image tokens → 77 tokens) and the condition resampler (reversed LLM
    context → 77 UNet condition tokens).
    """

    def __init__(self, config: Blip2QFormerConfig, num_queries: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(1, num_queries, config.hidden_size))
        self.qformer = Blip2QFormerModel(config)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        queries = self.queries.expand(tokens.shape[0], -1, -1)
        output = self.qformer(
            query_embeds=queries,
            encoder_hidden_states=tokens,
            encoder_attention_mask=attention_mask,
            return_dict=True,
        )
        return output.last_hidden_state
