"""SwinIR encoder without its upsampler (official class ``SwinIRNOUP``, classical-SR 'pixelshuffle' variant).

Flow (released configuration): conv_first 3x3 3->180 -> tokens -> LayerNorm ("patch_norm") -> 6 residual Swin
groups (RSTB: 6 Swin blocks, a 3x3 conv, plus the group input) -> final LayerNorm -> back to (B, C, H, W) ->
conv_after_body 3x3 180->180, plus the conv_first output (long skip) -> conv_before_upsample = conv3x3 180->64 +
LeakyReLU(0.01). The pixel-shuffle upsampler that would follow is not part of the model: the decoder consumes the
64-channel LR features.

Swin block: x + W-MSA(LN(x)), then x + MLP(LN(x)) with GELU and hidden = 2 x dim. Window 8, 6 heads of 30
channels, attention scale head_dim^-0.5, learned relative-position bias ((2w-1)^2 x heads table). Odd blocks are
shifted by w/2 = 4 (cyclic roll) and use the standard -100 mask between tokens that came from different image
regions.

Quirks kept on purpose:
* no mean subtraction: the input in [0, 1] goes straight into conv_first (img_range 1);
* LeakyReLU uses PyTorch's default slope 0.01, not the 0.2 used elsewhere in SwinIR;
* the odd blocks keep an ``attn_mask`` buffer for the 48x48 training size because the checkpoints store it (strict
  loading needs it). It is never read here: the mask of any size is rebuilt from four per-window patterns
  (see :func:`shift_mask_patterns`), which reproduces the stored buffer exactly for 48x48.
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
from .blocks import Mlp, window_partition, window_reverse
from .low_precision import add_, add_norm, float_norm

# The official mask value between tokens of different regions (not -inf: softmax stays finite everywhere).
_MASK_VALUE = -100.0


def relative_position_index(window: int) -> torch.Tensor:
    """(w*w, w*w) int64: row of the bias table for each (query, key) token pair of a window.

    Tokens are row-major; the pair's offset (dy, dx) in [-(w-1), w-1]^2 maps to (dy + w - 1) * (2w - 1) + dx + w - 1.
    """
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, N, N), offsets shifted to start at 0
    return rel[0] * (2 * window - 1) + rel[1]


def shift_mask_patterns(window: int, shift: int) -> torch.Tensor:
    """(2, 2, w*w, w*w) float32 additive masks for shifted windows: index [last window row?, last window column?].

    After the cyclic roll by -shift, each axis of the image splits into three regions: [0, L-w), [L-w, L-shift) and
    [L-shift, L). Tokens may attend to each other only within one region. Windows are aligned to multiples of w and
    L is a multiple of w, so a window that is not in the last row (column) lies entirely in region 0 along that
    axis, while one in the last row (column) splits at w - shift. Hence only four distinct masks exist, whatever
    the image size; this is what lets any size be handled without rebuilding per-size masks.
    """
    inner = torch.zeros(window, dtype=torch.long)  # region along one axis, window not last
    last = (torch.arange(window) >= window - shift).long() + 1  # regions 1 and 2 in the last window
    patterns = torch.empty(2, 2, window * window, window * window)
    for r, row_regions in enumerate((inner, last)):
        for c, col_regions in enumerate((inner, last)):
            label = (row_regions[:, None] * 3 + col_regions[None, :]).flatten()  # (N,), row-major tokens
            differ = label[:, None] != label[None, :]
            patterns[r, c] = torch.where(differ, _MASK_VALUE, 0.0)
    return patterns


def assemble_shift_mask(patterns: torch.Tensor, windows_h: int, windows_w: int) -> torch.Tensor:
    """(nW, N, N) mask for a grid of windows_h x windows_w windows (the official per-size ``attn_mask`` layout)."""
    last_row = torch.arange(windows_h) == windows_h - 1
    last_col = torch.arange(windows_w) == windows_w - 1
    idx_r = last_row.long()[:, None].expand(windows_h, windows_w)
    idx_c = last_col.long()[None, :].expand(windows_h, windows_w)
    return patterns[idx_r, idx_c].reshape(windows_h * windows_w, *patterns.shape[2:])


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with learned relative-position bias.

    Parameter names (``qkv``, ``proj``, ``relative_position_bias_table``, buffer ``relative_position_index``)
    are the checkpoint's.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.window_size = window_size
        self.num_heads = num_heads
        # Scale head_dim^-0.5 (the official qk_scale is None). It is also SDPA's default, so it is not passed.
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self) -> torch.Tensor:
        """(heads, N, N) additive bias gathered from the table."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, shift_patterns: torch.Tensor | None = None) -> torch.Tensor:
        """(B, nh, nw, N, C) windows on an nh x nw grid -> same shape.

        ``shift_patterns`` (see :func:`shift_mask_patterns`) is given for shifted blocks. The grid is then split
        into four groups (inner windows, last column, last row, corner) that each share one mask, so each group is
        one attention call with a broadcast (heads, N, N) mask; no (num_windows, heads, N, N) tensor is formed.
        """
        b, nh, nw, n, c = windows.shape
        heads = self.num_heads
        qkv = self.qkv(windows).reshape(b, nh, nw, n, 3, heads, c // heads)
        q, k, v = qkv.permute(4, 0, 1, 2, 5, 3, 6).unbind(0)  # each (B, nh, nw, heads, N, head_dim)
        bias = self.position_bias()
        if shift_patterns is None:
            out = _attend(q, k, v, bias)
        else:
            rows = ((slice(0, nh - 1), 0), (slice(nh - 1, nh), 1))
            cols = ((slice(0, nw - 1), 0), (slice(nw - 1, nw), 1))
            out = torch.cat([
                torch.cat([_attend(q[:, rs, cs], k[:, rs, cs], v[:, rs, cs], bias + shift_patterns[r, cc])
                           for cs, cc in cols], dim=2)
                for rs, r in rows], dim=1)
        out = out.transpose(-3, -2).reshape(b, nh, nw, n, c)  # heads back into channels
        return self.proj(out)


# Windows per attention call. CUDA's memory-efficient SDPA kernel puts the batch on a grid axis limited to 65535
# and fails with "invalid configuration argument" beyond it in older PyTorch (pytorch/pytorch#146704); a 2048 x 2048
# LR input already has 65536 windows of 8 x 8.
_MAX_WINDOWS_PER_CALL = 32768


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over (..., heads, N, d); ``mask`` is (heads, N, N), broadcast."""
    if q.numel() == 0:  # an empty group (a single row or column of windows)
        return q
    *lead, heads, n, d = q.shape
    # Fused kernels want 4-D inputs and a mask of the inputs' dtype (under autocast q/k/v are bf16, the mask fp32).
    q, k, v = (t.reshape(-1, heads, n, d) for t in (q, k, v))
    mask = mask.to(q.dtype)[None]
    step = _MAX_WINDOWS_PER_CALL
    chunks = [F.scaled_dot_product_attention(q[i:i + step], k[i:i + step], v[i:i + step], attn_mask=mask)
              for i in range(0, q.shape[0], step)]
    out = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
    return out.reshape(*lead, heads, n, d)


class SwinBlock(nn.Module):
    """Swin transformer block on (B, H, W, C) tokens; odd blocks of a group use shifted windows."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float, img_size: int):
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        if shift:
            patterns = shift_mask_patterns(window_size, shift)
            # Not saved: rebuilt from (window, shift); it follows .to(device) like any buffer.
            self.register_buffer("shift_patterns", patterns, persistent=False)
            # Checkpoint compatibility only (never read): the official mask for img_size x img_size.
            n = img_size // window_size
            self.register_buffer("attn_mask", assemble_shift_mask(patterns, n, n))
        else:
            self.register_buffer("shift_patterns", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window_size
        y = add_norm(x, None, self.norm1)  # bf16 already with the compiled kernels (low_precision.py)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(y, ws).reshape(b, h // ws, w // ws, ws * ws, c)
        windows = self.attn(windows, self.shift_patterns)
        y = window_reverse(windows.reshape(-1, ws * ws, c), ws, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y
        return add_(x, self.mlp(add_norm(x, None, self.norm2)))  # x is this block's own tensor: added in place


class SwinGroup(nn.Module):
    """The blocks of one residual group; named ``residual_group`` in the checkpoint, holding ``blocks``."""

    def __init__(self, blocks: Sequence[SwinBlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class ResidualSwinGroup(nn.Module):
    """RSTB: Swin blocks, then a 3x3 conv (resi_connection '1conv'), plus the group input. (B, H, W, C) in/out."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float, img_size: int):
        super().__init__()
        self.residual_group = SwinGroup([
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio, img_size)
            for i in range(depth)])
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.residual_group(x).permute(0, 3, 1, 2)  # the conv works on (B, C, H, W)
        return self.conv(y).permute(0, 2, 3, 1) + x


class PatchEmbed(nn.Module):
    """Patch size 1, so "embedding" is only the LayerNorm of the tokens (patch_norm); key ``patch_embed.norm``."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return float_norm(self.norm, x)  # the token stream starts here: float32, as in the official AMP


class SwinIREncoder(nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, num_feat, H, W); H and W must be multiples of ``window_size``.

    Defaults are the released configuration. ``img_size`` only sets the shape of the stored ``attn_mask`` buffers
    (the training patch size, 48); the model works at any multiple of the window.
    """

    def __init__(self, num_in_ch: int = 3, embed_dim: int = 180, depths: Sequence[int] = (6, 6, 6, 6, 6, 6),
                 num_heads: Sequence[int] = (6, 6, 6, 6, 6, 6), window_size: int = 8, mlp_ratio: float = 2.0,
                 img_size: int = 48, num_feat: int = 64):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
        # The official block silently drops the shift and shrinks the window when img_size <= window; no release
        # does that, so it is refused rather than mirrored.
        if img_size <= window_size or img_size % window_size:
            raise ValueError(f"img_size {img_size} must be a multiple of window_size {window_size} and larger")
        self.window_size = window_size
        self.out_channels = num_feat
        self.conv_first = nn.Conv2d(num_in_ch, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim)
        self.layers = nn.ModuleList([ResidualSwinGroup(embed_dim, d, h, window_size, mlp_ratio, img_size)
                                     for d, h in zip(depths, num_heads, strict=True)])
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        # Index 0 in a Sequential: the checkpoint key is conv_before_upsample.0.*; slope 0.01 is PyTorch's default.
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1),
                                                  nn.LeakyReLU(negative_slope=0.01))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.window_size or w % self.window_size:
            raise InvalidInputError(f"SwinIR input {h}x{w} must be a multiple of {self.window_size} on both sides; "
                                    "pad it first")
        # No mean subtraction and img_range 1: the [0, 1] input is used as is.
        shallow = self.conv_first(x)
        tokens = self.patch_embed(shallow.permute(0, 2, 3, 1))  # (B, H, W, C) channels-last tokens
        for layer in self.layers:
            tokens = layer(tokens)
        deep = self.norm(tokens).permute(0, 3, 1, 2)
        return self.conv_before_upsample(self.conv_after_body(deep) + shallow)


_LAYER_KEY = re.compile(r"^layers\.(\d+)\.conv\.weight$")
_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.residual_group\.blocks\.(\d+)\.norm1\.weight$")


def infer_swinir_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor kwargs of :class:`SwinIREncoder` from key names and tensor shapes of an official SwinIRNOUP dict.

    * embed_dim, in channels: conv_first (embed, in, 3, 3); num_feat: conv_before_upsample.0 (num_feat, embed, 3, 3)
    * depths: block indices per group; heads: columns of each group's relative_position_bias_table
    * window: the table has (2w - 1)^2 rows; mlp_ratio: fc1 rows / embed_dim
    * img_size: the odd blocks' attn_mask holds (img_size / w)^2 windows (square training patches). Without an odd
      block there is no mask, and img_size does not matter; the release value 48 is used.
    Not inferable, fixed by the architecture (release values): shift = w // 2, attention scale head_dim^-0.5,
    GELU in the MLP, LayerNorm eps 1e-5, LeakyReLU slope 0.01, '1conv' residual connection, patch size 1.
    Raises :class:`CheckpointError` (a ValueError) naming the first missing key if this is not a SwinIR encoder.
    """
    prefix0 = "layers.0.residual_group.blocks.0."
    for key in ("conv_first.weight", "patch_embed.norm.weight", "layers.0.conv.weight",
                prefix0 + "attn.relative_position_bias_table", prefix0 + "mlp.fc1.weight", "norm.weight",
                "conv_after_body.weight", "conv_before_upsample.0.weight"):
        if key not in state_dict:
            raise CheckpointError(f"not a SwinIR encoder state dict: key '{key}' is missing")

    num_layers = 1 + max(int(m.group(1)) for k in state_dict if (m := _LAYER_KEY.match(k)))
    depths = [0] * num_layers
    for k in state_dict:
        if (m := _BLOCK_KEY.match(k)) and int(m.group(1)) < num_layers:
            depths[int(m.group(1))] = max(depths[int(m.group(1))], int(m.group(2)) + 1)
    num_heads = []
    for i in range(num_layers):
        key = f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"
        if key not in state_dict:
            raise CheckpointError(f"not a SwinIR encoder state dict: key '{key}' is missing")
        num_heads.append(int(state_dict[key].shape[1]))

    table_rows = int(state_dict[prefix0 + "attn.relative_position_bias_table"].shape[0])
    side = math.isqrt(table_rows)
    if side * side != table_rows or side % 2 == 0:
        raise CheckpointError(f"relative_position_bias_table has {table_rows} rows, not (2w - 1)^2")
    window_size = (side + 1) // 2

    conv_first = state_dict["conv_first.weight"]
    embed_dim = int(conv_first.shape[0])
    hidden = int(state_dict[prefix0 + "mlp.fc1.weight"].shape[0])
    mlp_ratio = hidden / embed_dim
    if int(embed_dim * mlp_ratio) != hidden:  # the constructor sizes the MLP as int(dim * mlp_ratio)
        raise CheckpointError(f"MLP hidden size {hidden} is not reachable from embed_dim {embed_dim}")

    img_size = 48  # release value; only used when no odd block stores a mask
    mask = state_dict.get("layers.0.residual_group.blocks.1.attn_mask")
    if mask is not None:
        per_side = math.isqrt(int(mask.shape[0]))
        img_size = per_side * window_size

    return {
        "num_in_ch": int(conv_first.shape[1]),
        "embed_dim": embed_dim,
        "depths": tuple(depths),
        "num_heads": tuple(num_heads),
        "window_size": window_size,
        "mlp_ratio": mlp_ratio,
        "img_size": img_size,
        "num_feat": int(state_dict["conv_before_upsample.0.weight"].shape[0]),
    }
