"""Layers shared by several GSASR networks: window partitioning, a two-layer MLP and mixed 2-D RoPE.

Attribute names matter here: they are part of the official checkpoint keys (``fc1``/``fc2``, ``rope_freqs``,
``rope_t_x``, ``rope_t_y``), so the released weights load unchanged.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .low_precision import linear, linear_gelu, linear_relu


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window * window, C), windows in row-major order, tokens row-major inside."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, window * window, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.reshape(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


class Mlp(nn.Module):
    """fc1 -> activation -> fc2 (the official code's MLP in every network; no dropout at inference)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in bf16 on a CPU one fused product per layer (low_precision.py); elsewhere the modules' own operations
        if type(self.act) is nn.ReLU:
            return linear(linear_relu(x, self.fc1), self.fc2.weight, self.fc2.bias)
        if type(self.act) is nn.GELU and self.act.approximate == "none":
            return linear(linear_gelu(x, self.fc1), self.fc2.weight, self.fc2.bias)
        return self.fc2(self.act(self.fc1(x)))


# ---------------------------------------------------------------------------------------------------------------
# Mixed 2-D rotary position embedding (RoPE-Mixed): learnable per-head frequencies for x and y.
# A token t of a window whose grid is G wide sits at (t mod G, t div G). Its angle for head h and pair k is
# t_x * f_x[h, k] + t_y * f_y[h, k]; q and k are rotated pairwise (channels 2k, 2k+1) by that angle.
# ---------------------------------------------------------------------------------------------------------------

def rope_grid_positions(grid_width: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (t_x, t_y) of the first ``count`` tokens of a row-major grid ``grid_width`` wide."""
    t = torch.arange(count, dtype=torch.float32)
    return t % grid_width, torch.div(t, grid_width, rounding_mode="floor")


def initial_rope_freqs(head_dim: int, num_heads: int, theta: float = 10.0) -> torch.Tensor:
    """(2, heads, head_dim / 2) frequencies: magnitudes theta^(-4k/head_dim), a random direction per head.

    Only used to give freshly built (untrained) models sensible values; checkpoints overwrite them.
    """
    mag = 1.0 / (theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim))
    angles = torch.rand(num_heads, 1) * 2 * math.pi
    fx = torch.cat([mag * torch.cos(angles), mag * torch.cos(angles + math.pi / 2)], dim=-1)
    fy = torch.cat([mag * torch.sin(angles), mag * torch.sin(angles + math.pi / 2)], dim=-1)
    return torch.stack([fx, fy], dim=0)


def add_rope_parameters(module: nn.Module, head_dim: int, num_heads: int, grid_width: int, count: int,
                        theta: float = 10.0) -> None:
    """Give an attention module the official RoPE state: parameter ``rope_freqs``, buffers ``rope_t_x/_y``."""
    t_x, t_y = rope_grid_positions(grid_width, count)
    module.register_buffer("rope_t_x", t_x)
    module.register_buffer("rope_t_y", t_y)
    module.rope_freqs = nn.Parameter(initial_rope_freqs(head_dim, num_heads, theta))


def rope_phases(freqs: torch.Tensor, t_x: torch.Tensor, t_y: torch.Tensor) -> torch.Tensor:
    """Complex unit phases, (heads, N, head_dim / 2), always computed in float32 (angles need the range)."""
    with torch.autocast(device_type=t_x.device.type, enabled=False):
        freqs = freqs.float()
        angle = t_x.float()[None, :, None] * freqs[0][:, None, :] + t_y.float()[None, :, None] * freqs[1][:, None, :]
        return torch.polar(torch.ones_like(angle), angle)


def rope_rotation(phases: torch.Tensor) -> torch.Tensor:
    """The phases (heads, N, head_dim / 2) as the fused kernel's float32 (2, heads, N, head_dim) table: per channel
    pair [cos, cos] and [-sin, sin], so a pair (a, b) becomes (a cos - b sin, b cos + a sin), the complex product
    of :func:`apply_rope`."""
    cos, sin = phases.real.float(), phases.imag.float()
    return torch.stack([cos.repeat_interleave(2, dim=-1), torch.stack([-sin, sin], dim=-1).flatten(-2)]).contiguous()


def apply_rope(x: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """Rotate (B, heads, n, head_dim) by the first n phases; computed in at least float32 (float64 stays float64),
    returned in x's dtype."""
    n = x.shape[2]
    work = torch.promote_types(x.dtype, torch.float32)
    xc = torch.view_as_complex(x.to(work).reshape(*x.shape[:-1], -1, 2))
    rotated = xc * phases[:, :n, :].to(xc.dtype)
    return torch.view_as_real(rotated).flatten(3).to(x.dtype)
