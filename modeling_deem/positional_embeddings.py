"""Fixed sine-cosine position embeddings (1-D for the NIP context, 2-D for the image grid)."""

from __future__ import annotations

import torch


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """`(len(positions), dim)` embedding; half sines, half cosines, frequencies as in the Transformer paper."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(height: int, width: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """`(height * width, dim)` embedding, row-major; half the width encodes rows, half columns."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    return torch.cat([sincos_1d(rows, dim // 2), sincos_1d(cols, dim // 2)], dim=1)
