"""HAT-L encoder with rotary position embedding (official class ``HATNOUP_ROPE_AMP``), used by ``HATL_SA1B``.

HAT ("Hybrid Attention Transformer") without its upsampler:

    conv_first 3->C
    LayerNorm ("patch_embed.norm"; patch size 1, so tokens are pixels)
    12 x RHAG:  6 x HAB (window self-attention + scaled channel-attention conv branch, then MLP)
                1 x OCAB (overlapping cross-attention: 16x16 query windows attend to 24x24 key/value windows)
                3x3 conv, plus the group's input
    LayerNorm ("norm"), conv_after_body 3x3, plus the conv_first output
    conv_before_upsample: conv 3x3 C->64, LeakyReLU(0.01)

Quirks of the released model that are reproduced on purpose (see the spec, A.2 and A.5):
* no relative-position bias is used anywhere; RoPE rotates q and k instead;
* shifted blocks roll the image by window/2 but attend **without** the shifted-window mask, so tokens that wrap
  around the image border attend to each other; the mask is therefore never computed here;
* OCAB takes RoPE positions from a grid as wide as the overlapping window (24) for keys *and* queries, so the
  256 queries of a 16x16 window get the positions of the first 256 cells of a 24-wide grid;
* the buffers ``relative_position_index_SA``/``_OCA`` are stored in the checkpoint but unused: they are kept
  only so that the official state dict loads with ``strict=True``.

Internally features stay channels-last, ``(B, H, W, C)``; the official code flattens them to ``(B, H*W, C)``,
which is the same memory order, so every LayerNorm/Linear sees the same numbers.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, InvalidInputError
from .blocks import Mlp, add_rope_parameters, apply_rope, rope_phases, rope_rotation, window_partition, window_reverse
from .low_precision import (
    add_,
    add_norm,
    float_norm,
    linear,
    rope_,
    rope_fusable,
    window_attention,
    window_attention_fusable,
)


def _nchw(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> contiguous (B, C, H, W) before a convolution.

    A merely permuted (channels-last) tensor makes PyTorch's CPU convolution take another kernel whose rounding
    differs from the official model's (~1e-5 at the output); with the copy the CPU float32 output is bitwise
    identical to the official one.
    """
    return x.permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Convolutional branch (CAB): conv -> GELU -> conv -> channel attention. The nn.Sequential indices are part of the
# checkpoint keys (conv_block.cab.0 / .2 / .3.attention.1 / .3.attention.3), so the layout is kept as is.
# ---------------------------------------------------------------------------------------------------------------

class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: scale every channel by a gate computed from the global average."""

    def __init__(self, num_feat: int, squeeze_factor: int):
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(num_feat, num_feat // squeeze_factor, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat // squeeze_factor, num_feat, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): conv 3x3 C->C/compress, GELU, conv 3x3 back to C, channel attention."""

    def __init__(self, num_feat: int, compress_ratio: int, squeeze_factor: int):
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1),
            nn.GELU(),
            nn.Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeeze_factor),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)


# ---------------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------------

class WindowAttention(nn.Module):
    """Multi-head self-attention inside one window, with mixed RoPE on q and k and no bias or mask."""

    def __init__(self, dim: int, window_size: int, num_heads: int, rope_theta: float = 10.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        # Positions on the window's own grid (t mod ws, t div ws).
        add_rope_parameters(self, self.head_dim, num_heads, window_size, window_size * window_size, rope_theta)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """(num_windows * B, n, C) -> (num_windows * B, n, C)."""
        bn, n, c = windows.shape
        # channels of q/k/v are split head-major: (3, heads, head_dim), as in the checkpoint's qkv layout
        qkv = linear(windows, self.qkv.weight, self.qkv.bias)
        phases = rope_phases(self.rope_freqs, self.rope_t_x, self.rope_t_y)
        if rope_fusable(qkv):  # bf16 on a CPU with the compiled kernels (low_precision.py): q | k rotated in place
            rope_(qkv, 2 * c, c, rope_rotation(phases))
            q, k, v = qkv.chunk(3, dim=-1)
            if window_attention_fusable(q, k, v, self.num_heads):  # output already in the projection's layout
                return linear(window_attention(q, k, v, self.num_heads), self.proj.weight, self.proj.bias)
            q, k, v = (t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2) for t in (q, k, v))
        else:
            qkv = qkv.reshape(bn, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            q, k = apply_rope(q, phases), apply_rope(k, phases)
        # [QUIRK] no attention mask even in shifted blocks, no relative-position bias; default 1/sqrt(d) scale
        out = F.scaled_dot_product_attention(q, k, v)
        return linear(out.transpose(1, 2).reshape(bn, n, c), self.proj.weight, self.proj.bias)


class HAB(nn.Module):
    """Hybrid attention block on (B, H, W, C): (shifted) window attention + 0.01 x CAB, then an MLP."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, compress_ratio: int,
                 squeeze_factor: int, conv_scale: float, mlp_ratio: float, rope_theta: float = 10.0):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.conv_scale = conv_scale
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, rope_theta)
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        shortcut = x
        x = add_norm(x, None, self.norm1)  # bf16 already with the compiled kernels (low_precision.py)
        # the convolutional branch sees the normalised, unshifted image (contiguous NCHW: see _nchw)
        conv_x = self.conv_block(_nchw(x)).permute(0, 2, 3, 1)

        s = self.shift_size
        shifted = torch.roll(x, shifts=(-s, -s), dims=(1, 2)) if s else x
        attn = self.attn(window_partition(shifted, self.window_size))
        attn_x = window_reverse(attn, self.window_size, h, w)
        if s:
            attn_x = torch.roll(attn_x, shifts=(s, s), dims=(1, 2))

        # same summation order as the official block (shortcut + attention, then the scaled conv branch)
        x = shortcut + attn_x + conv_x * self.conv_scale
        return add_(x, self.mlp(add_norm(x, None, self.norm2)))  # x is this block's own tensor: added in place


class OCAB(nn.Module):
    """Overlapping cross-attention block on (B, H, W, C).

    Queries come from non-overlapping ws x ws windows; keys and values from ows x ows windows centred on them
    (ows = ws + int(overlap_ratio * ws)), taken from the zero-padded image. The padding is applied to the
    projected k/v, so padded tokens have k = v = 0 exactly (they still take part in the softmax with score 0).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, overlap_ratio: float, mlp_ratio: float,
                 rope_theta: float = 10.0):
        super().__init__()
        self.window_size = window_size
        self.overlap_win_size = int(window_size * overlap_ratio) + window_size
        if (self.overlap_win_size - window_size) % 2:
            # an odd overlap cannot be centred: the official unfold would then give the wrong window count
            raise ValueError(f"overlap window {self.overlap_win_size} - window {window_size} must be even")
        self.padding = (self.overlap_win_size - window_size) // 2
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        # [QUIRK] one grid, as wide as the larger window, serves queries and keys (queries use its first ws^2 cells)
        grid = max(window_size, self.overlap_win_size)
        add_rope_parameters(self, self.head_dim, num_heads, grid, grid * grid, rope_theta)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws, ows, p = self.window_size, self.overlap_win_size, self.padding
        shortcut = x
        qkv = linear(add_norm(x, None, self.norm1), self.qkv.weight, self.qkv.bias)  # (B, H, W, 3C): q | k | v

        q = window_partition(qkv[..., :c], ws)  # (B*nW, ws*ws, C)
        kv = F.pad(qkv[..., c:], (0, 0, p, p, p, p))  # zero border on H and W
        # sliding ows x ows windows with stride ws: (B, nH, nW, 2C, ows, ows), windows row-major like q's
        kv = kv.unfold(1, ows, ws).unfold(2, ows, ws)
        kv = kv.permute(0, 1, 2, 4, 5, 3).reshape(-1, ows * ows, 2 * c)  # tokens row-major inside the window
        k, v = kv[..., :c], kv[..., c:]
        bn = q.shape[0]

        phases = rope_phases(self.rope_freqs, self.rope_t_x, self.rope_t_y)
        out = self._fused_attention(q, kv, phases) if rope_fusable(q, kv) else None
        if out is None:
            q, k, v = (t.reshape(bn, -1, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
            q, k = apply_rope(q, phases), apply_rope(k, phases)  # q takes the first ws*ws phases [QUIRK]
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(bn, ws * ws, c)
        out = window_reverse(out, ws, h, w)

        x = linear(out, self.proj.weight, self.proj.bias) + shortcut
        return add_(x, self.mlp(add_norm(x, None, self.norm2)))  # x is this block's own tensor: added in place

    def _fused_attention(self, q: torch.Tensor, kv: torch.Tensor, phases: torch.Tensor) -> torch.Tensor | None:
        """bf16 on a CPU with the compiled kernels: RoPE in place on q (windows, ws^2, C) and on the k half of
        kv (windows, ows^2, 2C), q with the first ws^2 phases [QUIRK]; then the window attention kernel, its output
        (windows, ws^2, C). None, touching nothing, where the attention kernel does not apply (see
        low_precision.window_attention_fusable)."""
        c = q.shape[-1]
        k, v = kv.chunk(2, dim=-1)
        if not window_attention_fusable(q, k, v, self.num_heads):
            return None
        rotation = rope_rotation(phases)
        rope_(q, c, c, rotation[:, :, :q.shape[1]].contiguous())
        rope_(kv, c, c, rotation)
        return window_attention(q, k, v, self.num_heads)


# ---------------------------------------------------------------------------------------------------------------
# Groups and the whole encoder
# ---------------------------------------------------------------------------------------------------------------

class AttenBlocks(nn.Module):
    """The attention part of one group: ``depth`` HABs (odd ones shifted by ws/2), then one OCAB."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, compress_ratio: int,
                 squeeze_factor: int, conv_scale: float, overlap_ratio: float, mlp_ratio: float,
                 rope_theta: float = 10.0):
        super().__init__()
        self.blocks = nn.ModuleList([
            HAB(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, compress_ratio,
                squeeze_factor, conv_scale, mlp_ratio, rope_theta)
            for i in range(depth)
        ])
        self.overlap_attn = OCAB(dim, num_heads, window_size, overlap_ratio, mlp_ratio, rope_theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.overlap_attn(x)


class RHAG(nn.Module):
    """Residual hybrid attention group: attention blocks, a 3x3 conv, plus the group's input."""

    def __init__(self, dim: int, **block_kwargs):
        super().__init__()
        self.residual_group = AttenBlocks(dim, **block_kwargs)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(_nchw(self.residual_group(x))).permute(0, 2, 3, 1) + x


class PatchEmbedNorm(nn.Module):
    """The official ``patch_embed``: with patch size 1 it only flattens pixels to tokens, then a LayerNorm.

    Kept as its own module so the checkpoint key ``patch_embed.norm.*`` loads unchanged.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return float_norm(self.norm, x)  # the token stream starts here: float32, as in the official AMP


class HATEncoder(nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, num_feat, H, W); H and W must be multiples of ``window_size``.

    Defaults are the released HATL_SA1B configuration. No mean shift or range scaling is applied (the official
    forward has those lines commented out).
    """

    def __init__(self, num_in_ch: int = 3, embed_dim: int = 192, depths: Sequence[int] = (6,) * 12,
                 num_heads: Sequence[int] = (6,) * 12, window_size: int = 16, compress_ratio: int = 3,
                 squeeze_factor: int = 32, conv_scale: float = 0.01, overlap_ratio: float = 0.5,
                 mlp_ratio: float = 2.0, num_feat: int = 64, rope_theta: float = 10.0):
        super().__init__()
        depths, num_heads = tuple(depths), tuple(num_heads)
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} must have one entry per group")
        for heads in num_heads:
            # mixed RoPE gives each head head_dim/4 frequencies on x and as many on y, one per channel pair
            if embed_dim % heads or (embed_dim // heads) % 4:
                raise ValueError(f"embed_dim {embed_dim} must split into {heads} heads whose size is a multiple "
                                 "of 4 (mixed RoPE)")
        if embed_dim // compress_ratio < 1 or embed_dim // squeeze_factor < 1:
            raise ValueError(f"embed_dim {embed_dim} is too small for compress_ratio {compress_ratio} "
                             f"and squeeze_factor {squeeze_factor} (a layer would have no channels)")
        self.window_size = window_size
        self.out_channels = num_feat

        # Unused by the computation (no relative-position bias); registered only so the official state dict
        # loads strictly. Their values come from the checkpoint; a freshly built model just holds zeros.
        overlap_win = int(window_size * overlap_ratio) + window_size
        self.register_buffer("relative_position_index_SA",
                             torch.zeros(window_size ** 2, window_size ** 2, dtype=torch.long))
        self.register_buffer("relative_position_index_OCA",
                             torch.zeros(window_size ** 2, overlap_win ** 2, dtype=torch.long))

        self.conv_first = nn.Conv2d(num_in_ch, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbedNorm(embed_dim)
        self.layers = nn.ModuleList([
            RHAG(embed_dim, depth=depth, num_heads=heads, window_size=window_size, compress_ratio=compress_ratio,
                 squeeze_factor=squeeze_factor, conv_scale=conv_scale, overlap_ratio=overlap_ratio,
                 mlp_ratio=mlp_ratio, rope_theta=rope_theta)
            for depth, heads in zip(depths, num_heads, strict=True)
        ])
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        # what is left of the official pixel-shuffle upsampler: conv to num_feat (64) + LeakyReLU (slope 0.01)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1),
                                                  nn.LeakyReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.window_size or w % self.window_size:
            raise InvalidInputError(f"HAT encoder input {h}x{w} must be a multiple of {self.window_size} on both "
                                    "sides; pad it first (the official model reflect-pads bottom/right)")
        x = self.conv_first(x)
        feat = self.patch_embed(x.permute(0, 2, 3, 1))  # channels-last tokens
        for layer in self.layers:
            feat = layer(feat)
        feat = _nchw(self.norm(feat))
        x = self.conv_after_body(feat) + x
        return self.conv_before_upsample(x)


# ---------------------------------------------------------------------------------------------------------------
# Configuration from a state dict
# ---------------------------------------------------------------------------------------------------------------

_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.residual_group\.blocks\.(\d+)\.norm1\.weight$")


def _require(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise CheckpointError(f"not a HAT encoder state dict: key '{key}' is missing")
    return state_dict[key]


def _ratio_from_channels(dim: int, reduced: int, what: str) -> int:
    """The integer r with dim // r == reduced (the largest such r; any of them builds the same layer)."""
    r = dim // reduced if reduced else 0
    if r < 1 or dim // r != reduced:
        raise CheckpointError(f"HAT encoder: {what} has {reduced} channels, not dim // r for any r (dim {dim})")
    return r


def _float_ratio(count: int, dim: int) -> float:
    """The ratio r with int(dim * r) == count, as the constructors compute sizes (truncating dim * r)."""
    r = count / dim
    if int(dim * r) != count:  # count / dim rounded down by a hair: step up to the next float
        r = math.nextafter(r, math.inf)
    return r


def _isqrt_exact(n: int, what: str) -> int:
    r = math.isqrt(n)
    if r * r != n:
        raise CheckpointError(f"HAT encoder: {what} has {n} entries, not a square window")
    return r


def infer_hat_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Constructor kwargs of :class:`HATEncoder` from key names and tensor shapes of an official HATNOUP_ROPE_AMP dict.

    * embed_dim, num_in_ch: conv_first (embed, in, 3, 3); num_feat: conv_before_upsample.0 (num_feat, embed, 3, 3)
    * depths: block indices per group; num_heads: each group's first rope_freqs, shaped (2, heads, head_dim / 2)
    * window_size: a HAB's rope_t_x holds ws^2 positions; overlap_ratio: the OCAB's rope_t_x holds ows^2 positions
      with ows = ws + int(ws * overlap_ratio)
    * compress_ratio, squeeze_factor: the CAB's first conv has embed // compress_ratio outputs, the channel
      attention's first conv embed // squeeze_factor (the largest ratio giving that count is returned; any such
      ratio builds the same layers); mlp_ratio: fc1 rows / embed_dim
    Not inferable (no trace in the weights), so the release values are used: conv_scale = 0.01 (a plain multiplier
    of the CAB branch) and rope_theta (only shapes the initial RoPE frequencies, which the checkpoint overwrites;
    left at its default). Fixed by the architecture: shift = ws // 2 on odd blocks, attention scale head_dim^-0.5,
    GELU in MLPs and CAB, LayerNorm eps 1e-5, LeakyReLU slope 0.01, '1conv' residual connection, patch size 1.
    Raises :class:`CheckpointError` (a ValueError) naming the first missing key if this is not a HAT encoder.
    """
    g0 = "layers.0.residual_group."
    for key in ("conv_first.weight", "patch_embed.norm.weight", "layers.0.conv.weight",
                g0 + "blocks.0.attn.rope_t_x", g0 + "blocks.0.attn.rope_freqs", g0 + "blocks.0.mlp.fc1.weight",
                g0 + "blocks.0.conv_block.cab.0.weight", g0 + "blocks.0.conv_block.cab.3.attention.1.weight",
                g0 + "overlap_attn.rope_t_x", "norm.weight", "conv_after_body.weight",
                "conv_before_upsample.0.weight"):
        _require(state_dict, key)

    conv_first = state_dict["conv_first.weight"]
    embed_dim = int(conv_first.shape[0])
    window_size = _isqrt_exact(state_dict[g0 + "blocks.0.attn.rope_t_x"].numel(), "HAB rope_t_x")
    # the OCAB grid is max(ws, ows), and ows = ws + int(ws * ratio) >= ws
    grid = _isqrt_exact(state_dict[g0 + "overlap_attn.rope_t_x"].numel(), "OCAB rope_t_x")
    cab_hidden = int(state_dict[g0 + "blocks.0.conv_block.cab.0.weight"].shape[0])
    squeeze_hidden = int(state_dict[g0 + "blocks.0.conv_block.cab.3.attention.1.weight"].shape[0])
    mlp_hidden = int(state_dict[g0 + "blocks.0.mlp.fc1.weight"].shape[0])

    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        m = _BLOCK_KEY.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if sorted(blocks) != list(range(len(blocks))) or any(sorted(b) != list(range(len(b))) for b in blocks.values()):
        raise CheckpointError("HAT encoder: groups or blocks are not numbered 0..n-1 in the state dict")
    depths = tuple(len(blocks[i]) for i in range(len(blocks)))
    num_heads = tuple(int(_require(state_dict, f"layers.{i}.residual_group.blocks.0.attn.rope_freqs").shape[1])
                      for i in range(len(depths)))

    return {
        "num_in_ch": int(conv_first.shape[1]),
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": num_heads,
        "window_size": window_size,
        "compress_ratio": _ratio_from_channels(embed_dim, cab_hidden, "conv_block.cab.0"),
        "squeeze_factor": _ratio_from_channels(embed_dim, squeeze_hidden, "channel attention"),
        "conv_scale": 0.01,  # not in the weights: the release value
        "overlap_ratio": _float_ratio(grid - window_size, window_size),
        "mlp_ratio": _float_ratio(mlp_hidden, embed_dim),
        "num_feat": int(state_dict["conv_before_upsample.0.weight"].shape[0]),
    }
