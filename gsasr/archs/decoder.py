"""The GSASR Gaussian decoder ("Fea2GS"): encoder features + scale -> 16 raw 2-D Gaussians per LR pixel.

Two official forms share one skeleton and differ only in how attention knows where a token sits:

* ``"paper"`` (``GSASR_paper`` checkpoints, class ``Fea2GS``): learned relative-position bias tables.
* ``"enhanced"`` (``GSASR_enhenced_ultra`` checkpoints, class ``Fea2GS_ROPE_AMP``): mixed 2-D RoPE instead of the
  bias, plus a 3x3 conv at the end of every block and a ``conv_final`` before the global skip.

Pipeline (spec A.3): one learned query ("Gaussian seed") per LR pixel, arranged in ws x ws windows; condition
injection blocks let the seeds attend to the projected image features of their window; interaction blocks let
seeds attend to each other inside (alternately shifted) windows; ``UPNet`` turns each seed into a 4x4 patch of
tokens; five MLP heads turn every token into [p0, p1, rho, alpha, r, g, b, mean_x, mean_y].

Attribute names follow the official modules one for one, because they are the checkpoint keys; submodules are
also registered in the official order so ``state_dict()`` lists keys in checkpoint order.

Quirks of the official model that are reproduced on purpose (each is commented where it happens):
* the "scale cross-attention" attends to identical keys, so it is a per-image constant (computed as such here);
* shifted layers roll the image features (cross-attention) or the whole seed grid (self-attention) cyclically
  and apply **no** attention mask, so windows wrap around the image edges;
* the paper form's cross-attention ``relative_position_index`` cannot be recomputed and is loaded from the
  checkpoint;
* the Gaussian means are reference point + raw offset / grid size, with no squashing.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from . import winograd
from .blocks import Mlp, add_rope_parameters, apply_rope, rope_phases, rope_rotation, window_partition, window_reverse
from .low_precision import (
    ReLU,
    add_,
    add_norm,
    fused_linear_relu_applies,
    linear,
    linear_relu,
    relu_,
    rope_,
    rope_fusable,
    window_attention,
    window_attention_fusable,
)
from .window_chunks import WindowChunks
from .workspace import Workspace

FORMS = ("paper", "enhanced")

# On CPUs UPNet's first conv runs on batches of about this many seeds (512 Winograd tiles of 2 x 2 outputs): ~25 MB
# of intermediates at 768 output channels, few enough batches that per-call overheads do not matter. Accelerators
# use the seeds of one UPNet strip (fewer, bigger kernel launches).
_FIRST_CONV_BATCH_SEEDS_CPU = 2048
GAUSSIANS_PER_SEED = 16  # UPNet: two PixelShuffle(2) steps, so each seed becomes a 4 x 4 patch of Gaussians
_UPSAMPLE = 2  # factor of each of the two PixelShuffle steps
_NUM_PARAMS = 9  # [p0, p1, rho, alpha, r, g, b, mean_x, mean_y]


# ---------------------------------------------------------------------------------------------------------------
# Layout. Inside the attention blocks tokens live in window layout (B * nW, ws * ws, C), windows ordered row-major
# over the image and tokens row-major inside a window (the official rearrange order). Rolls and convolutions on
# the seed grid are done chunk by chunk in that layout (window_chunks.py).
# ---------------------------------------------------------------------------------------------------------------

def _swin_relative_position_index(grid: int) -> torch.Tensor:
    """Standard Swin index (grid^2, grid^2) into a (2 * grid - 1)^2 bias table: (dy + g - 1) * (2g - 1) + dx + g - 1."""
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, T)
    rel = coords[:, :, None] - coords[:, None, :] + (grid - 1)  # (2, T, T), both >= 0
    return rel[0] * (2 * grid - 1) + rel[1]


# ---------------------------------------------------------------------------------------------------------------
# Attention modules
# ---------------------------------------------------------------------------------------------------------------

class ScaleConditionAttention(nn.Module):
    """The official ``gs_cross_attn_scale`` (an ``nn.MultiheadAttention``), computed in closed form.

    Its keys and values are the same scale embedding repeated for every token, so all attention logits of a query
    are equal, the softmax is uniform, and the output is ``out_proj(W_v e + b_v)`` whatever the query is. Here that
    vector is computed once per image; the query/key projections are kept (unused) only so checkpoints load.
    Parameter names are nn.MultiheadAttention's: ``in_proj_weight`` (3C, C) = [W_q; W_k; W_v], ``in_proj_bias``,
    ``out_proj``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        # nn.MultiheadAttention's own initialisation, for freshly built models
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """embedding (B, C) -> the attention output (B, C) shared by every query of that image."""
        value = F.linear(embedding, self.in_proj_weight[2 * self.dim:], self.in_proj_bias[2 * self.dim:])
        return self.out_proj(value)


class WindowAttention(nn.Module):
    """Multi-head attention between the tokens of one window and a context window of the same size.

    Used as ``window_cross_attn`` (queries = seeds, context = image features) and as ``gs_self_attn``
    (context = the queries). Position information:
    * ``"bias"`` (paper): softmax(q k^T / sqrt(d) + table[index]) v, with ``relative_position_bias_table`` and the
      buffer ``relative_position_index``;
    * ``"rope"`` (enhanced): q and k rotated by mixed 2-D RoPE, then plain softmax attention (no bias, no mask).
    """

    def __init__(self, dim: int, num_heads: int, window: int, position: str, self_attention: bool,
                 rope_theta: float = 10.0):
        super().__init__()
        if position not in ("bias", "rope"):
            raise ValueError(f"position must be 'bias' or 'rope', got {position!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.tokens = window * window
        self.position = position
        if position == "bias":
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
            # For self-attention this is the standard Swin index. For the paper's cross-attention the official
            # constructor numbers the 2 ws - 1 coordinate deltas in the iteration order of a Python ``set`` (not
            # sorted) and combines them as id(dy) * (2 ws - 2) + id(dx), which collides (max 506 for ws = 12): that
            # buffer is only meaningful as loaded from the checkpoint. A fresh model gets the standard index, a valid
            # placeholder of the same shape and dtype.
            self.register_buffer("relative_position_index", _swin_relative_position_index(window))
        else:
            # rope_freqs (param) and rope_t_x/rope_t_y (buffers): positions (t mod ws, t div ws) in the window
            add_rope_parameters(self, self.head_dim, num_heads, window, self.tokens, rope_theta)
        # Official registration order differs between the two uses; keep it so state_dict() order matches.
        if self_attention:
            self.proj = nn.Linear(dim, dim)
        self.qhead = nn.Linear(dim, dim)
        self.khead = nn.Linear(dim, dim)
        self.vhead = nn.Linear(dim, dim)
        if not self_attention:
            self.proj = nn.Linear(dim, dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, C) -> (N, heads, T, head_dim)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def _projections(self, query: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The q, k, v products: (q, k, v) (N, T, C) in float32/float64, three products as the official model. With
        weights in a reduced precision (low_precision.py, under autocast) the activations are cast once and k, v
        (and q, in self-attention) come from one product with the weights stacked, the same roundings in fewer
        passes: then (qkv,) (N, T, 3C) in self-attention, (q, kv) in cross-attention."""
        weight = self.qhead.weight
        if weight.dtype in (torch.float32, torch.float64):
            return self.qhead(query), self.khead(context), self.vhead(context)
        heads = (self.qhead, self.khead, self.vhead) if query is context else (self.khead, self.vhead)
        stacked = linear(context, torch.cat([h.weight for h in heads]), torch.cat([h.bias for h in heads]))
        if query is context:
            return (stacked,)
        return linear(query, self.qhead.weight, self.qhead.bias), stacked

    def position_terms(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """What encodes token positions, the same for every window: the (heads, T, T) bias, or the RoPE phases and
        (under the fused kernels only) their :func:`rope_rotation` table. The decoder computes it once per layer and
        passes it to every chunk."""
        if self.position == "bias":
            bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
            # contiguous once per layer: the attention kernel reads it as such in every chunk
            return bias.view(self.tokens, self.tokens, self.num_heads).permute(2, 0, 1).contiguous()
        phases = rope_phases(self.rope_freqs, self.rope_t_x, self.rope_t_y)
        return phases, rope_rotation(phases) if rope_fusable() else None  # the table only the fused kernel reads

    def _tokens(self, projections: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """q, k, v (N, T, C), views of the products of :meth:`_projections`."""
        width = self.num_heads * self.head_dim
        return tuple(t for p in projections for t in p.chunk(p.shape[-1] // width, dim=-1))

    def forward(self, query: torch.Tensor, context: torch.Tensor,
                position: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None] | None = None) -> torch.Tensor:
        """query (N, Tq, C), context (N, Tk, C) -> (N, Tq, C); N = batch * windows. ``position``: this module's
        :meth:`position_terms` (computed here when not given)."""
        projections = self._projections(query, context)
        if position is None:
            position = self.position_terms()
        bias = None
        if self.position == "bias":
            q, k, v = self._tokens(projections)
            if window_attention_fusable(q, k, v, self.num_heads):  # bf16 on a CPU with the compiled kernels
                out = window_attention(q, k, v, self.num_heads, bias=position)  # the bias added in float32
                return linear(out, self.proj.weight, self.proj.bias)
            q, k, v = (self._split_heads(t) for t in (q, k, v))
            bias = position.to(q.dtype)
            if q.dtype in (torch.bfloat16, torch.float16) and q.device.type == "cpu":
                # As a (windows, heads, T, T) view (no copy) the bias takes the fused kernel; as (heads, T, T) PyTorch's
                # CPU attention took a path 5x slower (measured, bf16). Not in float32, whose numbers stay bitwise
                # (there the two paths round differently, ~1e-6); GPUs keep what they had.
                bias = bias.expand(q.shape[0], *bias.shape)
        elif rope_fusable(*projections):
            # bf16 on a CPU with the fused kernels: RoPE in place on the products (q | k of the stacked product, or q,
            # then k of k | v), then the window attention kernel, whose output is already in the projection's layout
            phases, rotation = position
            if rotation is None:  # position terms computed outside the kernels' block
                rotation = rope_rotation(phases)
            width = self.num_heads * self.head_dim
            for tokens, columns in zip(projections, (2 * width,) if len(projections) == 1 else (width, width),
                                       strict=True):
                rope_(tokens, columns, width, rotation)
            q, k, v = self._tokens(projections)
            if window_attention_fusable(q, k, v, self.num_heads):
                return linear(window_attention(q, k, v, self.num_heads), self.proj.weight, self.proj.bias)
            q, k, v = (self._split_heads(t) for t in (q, k, v))
        else:
            phases, _ = position
            q, k, v = (self._split_heads(t) for t in self._tokens(projections))
            q, k = apply_rope(q, phases), apply_rope(k, phases)
        # Default SDPA scale is head_dim^-0.5, the official scale in both forms. The paper's bias is the only
        # additive term: neither form masks the wrapped-around tokens of shifted windows. The decoder calls this on
        # chunks of a few windows (WindowChunks), which bounds the logits held at once.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return linear(out.transpose(1, 2).flatten(2), self.proj.weight, self.proj.bias)


# ---------------------------------------------------------------------------------------------------------------
# Layers and blocks
# ---------------------------------------------------------------------------------------------------------------

class CrossAttentionLayer(nn.Module):
    """Condition injection (official ``WindowCrossAttnLayer``): scale term, MLP, window cross-attention, MLP."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, position: str, rope_theta: float):
        super().__init__()
        self.shift = shift
        self.gs_cross_attn_scale = ScaleConditionAttention(dim)
        # norm1 fed the scale attention's query, which cannot change its output: unused, kept for the checkpoint
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.window_cross_attn = WindowAttention(dim, num_heads, window, position, self_attention=False,
                                                 rope_theta=rope_theta)
        self.mlp_crossattn_scale = Mlp(dim, dim, dim)
        self.mlp_crossattn_feature = Mlp(dim, dim, dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, feat_windows: dict[int, torch.Tensor],
                scale_embedding: torch.Tensor, chunks: WindowChunks) -> None:
        """Updates the seeds x (B * nW, T, C) in place."""
        scale_term = self.gs_cross_attn_scale(scale_embedding)
        # [QUIRK] On shifted layers only the features are rolled (by -ws/2, cyclically), not the queries, and
        # there is no mask: seeds of window (m, n) see the pixels of the window displaced by (+ws/2, +ws/2).
        context = feat_windows[self.shift]
        position = self.window_cross_attn.position_terms()

        def step(x: torch.Tensor, image: int, w0: int, w1: int) -> None:
            # each residual step fused with the next LayerNorm where it can be (low_precision.add_norm), except
            # norm3, whose float32 output takes the position embedding before it is rounded
            add_(x, self.mlp_crossattn_scale(add_norm(x, scale_term[image], self.norm2)))
            y = add_norm(x, self.window_cross_attn(self.norm3(x) + pos, context[w0:w1], position), self.norm4)
            add_(x, self.mlp_crossattn_feature(y))

        chunks.update(x, step)


class SelfAttentionLayer(nn.Module):
    """Gaussian interaction (official ``GSSelfAttnLayer``): scale term, MLP, (shifted) window self-attention, MLP."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, position: str, rope_theta: float):
        super().__init__()
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        # norm3 fed the scale attention's query, which cannot change its output: unused, kept for the checkpoint
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.gs_self_attn = WindowAttention(dim, num_heads, window, position, self_attention=True,
                                            rope_theta=rope_theta)
        self.mlp_selfattn = Mlp(dim, dim, dim)
        self.gs_cross_attn_scale = ScaleConditionAttention(dim)
        self.mlp_crossattn = Mlp(dim, dim, dim)

    def forward(self, x: torch.Tensor, scale_embedding: torch.Tensor, chunks: WindowChunks) -> None:
        """Updates the seeds x (B * nW, T, C) in place."""
        scale_term = self.gs_cross_attn_scale(scale_embedding)
        position = self.gs_self_attn.position_terms()

        def step(x: torch.Tensor, image: int, w0: int, w1: int) -> None:
            # x += scale term; x += MLP(norm4(x)); x += attention(norm1(x)); x += MLP(norm2(x)), each residual step
            # fused with the next LayerNorm where it can be (low_precision.add_norm)
            y = add_norm(x, self.mlp_crossattn(add_norm(x, scale_term[image], self.norm4)), self.norm1)
            y = add_norm(x, self.gs_self_attn(y, y, position), self.norm2)
            add_(x, self.mlp_selfattn(y))

        # [QUIRK] Shifted layers roll the whole grid by -ws/2 and back, with no attention mask: tokens that wrapped
        # around the image edge attend to each other as if they were neighbours. Every other step of the layer is
        # per token, so the layer runs on chunks of rolled windows (see WindowChunks).
        chunks.update(x, step, self.shift)


def _block_mlp(dim: int) -> nn.Sequential:
    """Linear-ReLU-Linear as an nn.Sequential (official keys ``mlp.0`` / ``mlp.2``)."""
    return nn.Sequential(nn.Linear(dim, dim), ReLU(), nn.Linear(dim, dim))


class _ResidualLayerStack(nn.Module):
    """What both kinds of decoder block share: r = x; LN; the layers; MLP; [enhanced: a 3x3 conv on the seed grid];
    x = r + x. Submodule names (and their order) are the official ones: mlp, norm, blocks, conv.

    Runs in place, chunk by chunk: the block's input x (B * nW, T, C) becomes its output, and the branch lives in
    the chunks' scratch stream.
    """

    def __init__(self, dim: int, layers: list[nn.Module], form: str):
        super().__init__()
        self.mlp = _block_mlp(dim)
        self.norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(layers)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1) if form == "enhanced" else None

    def _run(self, x: torch.Tensor, chunks: WindowChunks,
             layer_step: Callable[[nn.Module, torch.Tensor], None]) -> None:
        y = chunks.map(self.norm, x, out=chunks.scratch(x))
        for layer in self.blocks:
            layer_step(layer, y)  # in place, chunk by chunk
        chunks.map(self.mlp, y, out=y)
        if self.conv is not None:
            chunks.conv_add(self.conv, y, x)
        else:
            x += y


def _shift(i: int, window: int) -> int:
    """Even layers attend in aligned windows, odd layers in windows displaced by half a window."""
    return 0 if i % 2 == 0 else window // 2


class CrossAttentionBlock(_ResidualLayerStack):
    """Condition injection: seeds attend to the image features of their window (shifted on odd layers)."""

    def __init__(self, dim: int, num_heads: int, window: int, num_layers: int, form: str, rope_theta: float):
        position = "bias" if form == "paper" else "rope"
        layers = [CrossAttentionLayer(dim, num_heads, window, _shift(i, window), position, rope_theta)
                  for i in range(num_layers)]
        super().__init__(dim, layers, form)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, feat_windows: dict[int, torch.Tensor],
                scale_embedding: torch.Tensor, chunks: WindowChunks) -> None:
        self._run(x, chunks, lambda layer, y: layer(y, pos, feat_windows, scale_embedding, chunks))


class SelfAttentionBlock(_ResidualLayerStack):
    """Gaussian interaction: seeds attend to each other inside (shifted) windows of the global seed grid."""

    def __init__(self, dim: int, num_heads: int, window: int, num_layers: int, form: str, rope_theta: float):
        position = "bias" if form == "paper" else "rope"
        layers = [SelfAttentionLayer(dim, num_heads, window, _shift(i, window), position, rope_theta)
                  for i in range(num_layers)]
        super().__init__(dim, layers, form)

    def forward(self, x: torch.Tensor, scale_embedding: torch.Tensor, chunks: WindowChunks) -> None:
        self._run(x, chunks, lambda layer, y: layer(y, scale_embedding, chunks))


def _gaussian_head(dim: int, out: int) -> nn.Sequential:
    """Per-token MLP C -> C -> 4C -> out (official keys ``.0``, ``.2``, ``.4``)."""
    # In-place ReLUs: the 4C activations of a chunk are the largest tensors of the decoder; not allocating a second
    # copy saves its memory traffic (~13 % of the decoder's time on a CPU). Same values.
    return nn.Sequential(nn.Linear(dim, dim), ReLU(), nn.Linear(dim, 4 * dim), ReLU(), nn.Linear(4 * dim, out))


def _run_head(head: nn.Sequential, tokens: torch.Tensor, workspace: Workspace) -> torch.Tensor:
    """``head(tokens)`` for a :func:`_gaussian_head`, (B, n, C) -> (B, n, out), its two hidden activations in the
    ``workspace`` (the largest tensors of the decoder, allocated once per forward instead of once per strip and
    head). The same operations as the modules. Under autocast with float32 weights the modules themselves run
    (autocast has no ``out=`` forms); with weights already in the tokens' dtype (low_precision.py) the products are
    autocast's own: on a CPU in bf16 each hidden layer is one product with its bias and ReLU fused
    (low_precision.linear_relu, faster than the workspace's three passes), otherwise the workspace path runs in that
    dtype."""
    first, wide, last = head[0], head[2], head[4]
    device = tokens.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else tokens.dtype
    if any(layer.weight.dtype != dtype for layer in (first, wide, last)) or tokens.dtype != dtype:
        return head(tokens)
    x = tokens.reshape(-1, tokens.shape[-1])
    if fused_linear_relu_applies(x, first.weight):  # bf16 on a CPU: bias and ReLU fused into the products
        wide_out = linear_relu(linear_relu(x, first), wide)
        return linear(wide_out, last.weight, last.bias).view(*tokens.shape[:-1], -1)
    hidden = workspace.take("head_hidden", (x.shape[0], first.out_features), x.dtype)
    relu_(torch.addmm(first.bias, x, first.weight.t(), out=hidden))
    activations = workspace.take("head_wide", (x.shape[0], wide.out_features), x.dtype)
    relu_(torch.addmm(wide.bias, hidden, wide.weight.t(), out=activations))
    return F.linear(activations, last.weight, last.bias).view(*tokens.shape[:-1], -1)


# ---------------------------------------------------------------------------------------------------------------
# The decoder
# ---------------------------------------------------------------------------------------------------------------

class GaussianDecoder(nn.Module):
    """Encoder features (B, in_channels, h, w) + scale -> raw Gaussians (B, 16 h w, 9).

    h and w must be multiples of ``window_size``. ``scale`` is a Python number or a tensor of shape (B,).
    The output order per Gaussian is [p0, p1, rho, alpha, r, g, b, mean_x, mean_y] (raw, except that the means
    already include their reference point), Gaussians row-major over the 4h x 4w grid. The output is float32
    (also under autocast, like the official final concatenation; float64 for a float64 model).

    ``max_gaussians_per_chunk`` bounds how many Gaussians (over the whole batch) go through UPNet and the heads
    at once, ``max_tokens_per_chunk`` how many seeds go through an attention layer at once (whole windows, see
    WindowChunks); both change peak memory and speed only, not the result (bitwise with even windows; with odd
    ones matrix-product kernels may round a few rows differently, ~1e-7). ``None`` picks by device.
    """

    max_gaussians_per_chunk: int | None = None
    max_tokens_per_chunk: int | None = None

    # CPU: 2^13 Gaussians keep a chunk's largest activation (Gaussians x 4C floats) near 25 MB, which the C
    # allocator reuses from its heap; 2^16 (200 MB blocks) went to fresh mmap pages every chunk, and page faults
    # cost ~15 % of the decoder's time. Attention chunks of 4096 seeds are 3 MB per activation. Matrix products of
    # these sizes still run at full speed. GPUs: every chunk costs kernel launches, and the caching allocator
    # makes big blocks free to reuse, so chunks are 16-32x larger (about 100-200 MB per activation).
    _CHUNKS_CPU = (1 << 13, 1 << 12)  # (Gaussians, seeds)
    _CHUNKS_ACCELERATOR = (1 << 17, 1 << 17)

    def _chunk_sizes(self, device: torch.device) -> tuple[int, int]:
        gaussians, tokens = self._CHUNKS_CPU if device.type == "cpu" else self._CHUNKS_ACCELERATOR
        return self.max_gaussians_per_chunk or gaussians, self.max_tokens_per_chunk or tokens

    def __init__(self, form: str = "enhanced", in_channels: int = 64, channels: int = 192, num_heads: int = 6,
                 window_size: int = 12, num_crossattn_blocks: int = 1, num_crossattn_layers: int = 2,
                 num_selfattn_blocks: int = 6, num_selfattn_layers: int = 6, rope_theta: float = 10.0):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be a multiple of num_heads ({num_heads})")
        if form == "enhanced" and (channels // num_heads) % 4:
            raise ValueError(f"the enhanced form's RoPE needs a head dimension divisible by 4, "
                             f"got {channels // num_heads}")
        self.form = form
        self.in_channels = in_channels
        self.channels = channels
        self.window_size = window_size
        seeds = window_size * window_size  # one seed per LR pixel (num_gs_seed = ws^2 in every release)

        self.gs_embedding = nn.Parameter(torch.randn(seeds, channels))
        # Added to the seeds wherever they are attention queries; only the window cross-attention can see it.
        self.pos_embedding = nn.Parameter(torch.randn(seeds, channels))
        self.img_feat_proj = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, 1, 1), nn.ReLU(), nn.Conv2d(channels, channels, 3, 1, 1))
        self.window_crossattn_blocks = nn.ModuleList([
            CrossAttentionBlock(channels, num_heads, window_size, num_crossattn_layers, form, rope_theta)
            for _ in range(num_crossattn_blocks)])
        self.gs_selfattn_blocks = nn.ModuleList([
            SelfAttentionBlock(channels, num_heads, window_size, num_selfattn_layers, form, rope_theta)
            for _ in range(num_selfattn_blocks)])
        self.mlp_block_sigma = _gaussian_head(channels, 2)
        self.mlp_block_rho = _gaussian_head(channels, 1)
        self.mlp_block_alpha = _gaussian_head(channels, 1)
        self.mlp_block_rgb = _gaussian_head(channels, 3)
        self.mlp_block_mean = _gaussian_head(channels, 2)
        self.scale_mlp = nn.Sequential(nn.Linear(1, 4 * channels), nn.ReLU(), nn.Linear(4 * channels, channels))
        self.UPNet = nn.Sequential(
            nn.Conv2d(channels, channels * _UPSAMPLE ** 2, 3, 1, 1), nn.PixelShuffle(_UPSAMPLE),
            nn.Conv2d(channels, channels * _UPSAMPLE ** 2, 3, 1, 1), nn.PixelShuffle(_UPSAMPLE))
        self.conv_final = nn.Conv2d(channels, channels, 3, 1, 1) if form == "enhanced" else None

    # -- forward ------------------------------------------------------------------------------------------------

    def _scale_embedding(self, scale: float | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
        """scale_mlp(1 / s), (B, C). 1/s is taken in float32 (the official scripts pass a float32 tensor), or in
        float64 for a float64 model, then handed to scale_mlp in its parameter dtype."""
        weight_dtype = self.scale_mlp[0].weight.dtype
        s = torch.as_tensor(scale, dtype=torch.promote_types(torch.float32, weight_dtype), device=device)
        if s.ndim == 0:
            s = s.expand(batch)
        if s.shape != (batch,):
            raise ValueError(f"scale must be a number or a tensor of shape ({batch},), got shape {tuple(s.shape)}")
        return self.scale_mlp((1.0 / s)[:, None].to(weight_dtype))

    def forward(self, feat: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
        b, _, h, w = feat.shape
        ws = self.window_size
        if h % ws or w % ws:
            raise ValueError(f"feature size {h}x{w} must be a multiple of the decoder window ({ws}); pad the input")
        windows = (h // ws) * (w // ws)
        scale_embedding = self._scale_embedding(scale, b, feat.device)

        # Image features in window layout, unshifted and rolled by -ws/2 (shared by all cross-attention layers).
        image = self.img_feat_proj(feat).permute(0, 2, 3, 1)
        feat_windows = {0: window_partition(image, ws)}
        if any(layer.shift for block in self.window_crossattn_blocks for layer in block.blocks):
            feat_windows[ws // 2] = window_partition(torch.roll(image, (-(ws // 2), -(ws // 2)), (1, 2)), ws)

        # Every window starts from the same learned seeds. The blocks update x in place.
        x = self.gs_embedding.expand(b * windows, -1, -1).contiguous()
        chunks = WindowChunks(b, h, w, ws, self._chunk_sizes(feat.device)[1], feat.device)
        for block in self.window_crossattn_blocks:
            block(x, self.pos_embedding, feat_windows, scale_embedding, chunks)
        del feat_windows, image

        residual = x.clone()
        for block in self.gs_selfattn_blocks:
            block(x, scale_embedding, chunks)
        if self.conv_final is None:  # paper: skip, then to image layout
            residual += x
        else:  # enhanced: conv_final, then skip
            chunks.conv_add(self.conv_final, x, residual)
        del x, chunks
        return self._gaussians(window_reverse(residual, ws, h, w))

    # -- UPNet and heads, in strips of LR rows ------------------------------------------------------------------

    def _first_conv_batches(self, grid: torch.Tensor):
        """UPNet's first conv and pixel shuffle on batches of seed rows: yields (c0, c1, (B, 2 (c1 - c0), 2 w, C)),
        channels last, for consecutive row ranges covering the grid (B, h, w, C).

        On a CPU the batches depend on the grid alone (an even number of rows, starting on even rows), never on the
        strip size, so every row is computed the same way whatever the chunking; each row is computed once.
        """
        b, h, w, _ = grid.shape
        seeds = (_FIRST_CONV_BATCH_SEEDS_CPU if grid.device.type == "cpu"
                 else self._chunk_sizes(grid.device)[0] // GAUSSIANS_PER_SEED)
        rows = 2 * max(1, -(-seeds // (2 * b * w)))  # even, so Winograd tiles never straddle two batches
        conv = winograd.ChannelsLastConv(self.UPNet[0], grid, _UPSAMPLE)
        workspace = Workspace(grid.device)  # intermediates only: a batch's output may outlive the next batch
        for c0 in range(0, h, rows):
            c1 = min(c0 + rows, h)
            src = grid[:, max(c0 - 1, 0):min(c1 + 1, h)]  # one row of context each side, zeros outside the grid
            yield c0, c1, conv(src, (1, 1, int(c0 == 0), int(c1 == h)), workspace, output_in_workspace=False)

    def _upsampled_strips(self, grid: torch.Tensor, rows: int, workspace: Workspace):
        """UPNet on strips of ``rows`` seed rows of the grid (B, h, w, C): yields (r0, r1, (B, 4 (r1 - r0), 4 w, C)),
        channels last (the heads' token layout), equal to slicing the whole grid's output.

        Each 3x3 conv needs one row of context on either side at its own resolution; rows outside the grid are the
        zero padding of the whole-grid conv. The first conv runs on its own batches of rows (computed once, kept
        while strips need them), so thin strips (one seed row on wide images) cost no extra convolution. Both convs
        run as Winograd convolutions where that applies (float32 on a CPU, see winograd.py); their tiles start on
        even rows, so strips still give the whole grid's numbers. The second conv's output may then be a
        ``workspace`` buffer, overwritten by the next strip.
        """
        conv2 = winograd.ChannelsLastConv(self.UPNet[2], grid, _UPSAMPLE)
        h = grid.shape[1]
        batches = self._first_conv_batches(grid)
        kept: list[tuple[int, int, torch.Tensor]] = []  # first-conv batches a strip may still need, in order
        for r0 in range(0, h, rows):
            r1 = min(r0 + rows, h)
            a, b = max(r0 - 1, 0), min(r1 + 1, h)  # coarse rows of the first conv's output the second conv needs
            while not kept or kept[-1][1] < b:
                kept.append(next(batches))
            while kept[0][1] <= a:
                kept.pop(0)
            parts = [out[:, _UPSAMPLE * (max(a, c0) - c0):_UPSAMPLE * (min(b, c1) - c0)] for c0, c1, out in kept]
            y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # fine rows [2a, 2b)
            lo, hi = max(2 * r0 - 1, 0), min(2 * r1 + 1, 2 * h)  # fine rows the second conv needs
            # zero columns on both sides, zero rows at the grid's edges
            yield r0, r1, conv2(y[:, lo - 2 * a:hi - 2 * a], (1, 1, int(r0 == 0), int(r1 == h)), workspace)

    def _gaussians(self, grid: torch.Tensor) -> torch.Tensor:
        """Seed grid (B, h, w, C) -> (B, 16 h w, 9), processed in strips of rows to bound peak memory."""
        b, h, w, _ = grid.shape
        patch = _UPSAMPLE ** 2  # each seed becomes a patch x patch block of Gaussians
        gh, gw = patch * h, patch * w  # the Gaussian grid
        # Reference points: cell centres of the Gaussian grid in [0, 1], made exactly like the official code
        # (float32 linspace from step/2 to 1 - step/2) so the means match bit for bit.
        ref_x = torch.linspace(0.5 / gw, 1 - 0.5 / gw, gw, dtype=torch.float32, device=grid.device)
        ref_y = torch.linspace(0.5 / gh, 1 - 0.5 / gh, gh, dtype=torch.float32, device=grid.device)
        out_dtype = torch.promote_types(torch.float32, self.gs_embedding.dtype)
        grid_size = torch.tensor([gw, gh], dtype=out_dtype, device=grid.device)
        out = torch.empty(b, gh * gw, _NUM_PARAMS, dtype=out_dtype, device=grid.device)

        rows = max(1, self._chunk_sizes(grid.device)[0] // (b * GAUSSIANS_PER_SEED * w))
        workspace = Workspace(grid.device)
        for r0, r1, upsampled in self._upsampled_strips(grid, rows, workspace):
            tokens = upsampled.flatten(1, 2)  # (B, n, C) row-major
            # Raw offsets are in Gaussian-grid cells. Divided in float32 (the official divides by an integer
            # tensor: the same in float32, and more accurate than its bf16 arithmetic under autocast).
            offset = _run_head(self.mlp_block_mean, tokens, workspace).to(out_dtype) / grid_size
            ref_rows = ref_y[patch * r0:patch * r1]
            ref = torch.stack(torch.meshgrid(ref_rows, ref_x, indexing="ij")[::-1], -1).flatten(0, 1)  # (n, [x, y])
            out[:, patch * r0 * gw:patch * r1 * gw] = torch.cat([
                _run_head(self.mlp_block_sigma, tokens, workspace).to(out_dtype),
                _run_head(self.mlp_block_rho, tokens, workspace).to(out_dtype),
                _run_head(self.mlp_block_alpha, tokens, workspace).to(out_dtype),
                _run_head(self.mlp_block_rgb, tokens, workspace).to(out_dtype),
                (offset + ref).to(out_dtype),  # [QUIRK] no squashing: means may leave [0, 1]
            ], dim=-1)
        return out


# ---------------------------------------------------------------------------------------------------------------
# Hyperparameters from a state dict
# ---------------------------------------------------------------------------------------------------------------

def _count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    """Number of distinct integers i for which some key matches ``pattern`` (a regex with one group)."""
    rx = re.compile(pattern)
    found = {int(m.group(1)) for key in state_dict if (m := rx.fullmatch(key))}
    return len(found)


def infer_decoder_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Constructor kwargs for :class:`GaussianDecoder` from an official decoder state dict (key names and shapes).

    What cannot be read from a checkpoint: ``rope_theta`` (only shapes the random initial RoPE frequencies, which
    the checkpoint overwrites), so the default is kept. ``num_heads`` is not visible in linear-layer shapes, but the
    bias tables (paper, second dim) and ``rope_freqs`` (enhanced, (2, heads, head_dim / 2)) carry it.
    Raises :class:`~gsasr.errors.CheckpointError` (a ValueError) naming the key that is missing or odd.
    """
    def need(key: str, ndim: int) -> torch.Tensor:
        if key not in state_dict:
            raise CheckpointError(f"not a GSASR decoder state dict: key {key!r} is missing")
        value = state_dict[key]
        if value.ndim != ndim:
            raise CheckpointError(f"not a GSASR decoder state dict: {key!r} has shape {tuple(value.shape)}, "
                                  f"expected {ndim} dimensions")
        return value

    seeds, channels = need("gs_embedding", 2).shape
    window = math.isqrt(seeds)
    if window * window != seeds:
        raise CheckpointError(f"'gs_embedding' has {seeds} seeds per window, not a square number")
    proj = need("img_feat_proj.0.weight", 4)
    if proj.shape[0] != channels:
        raise CheckpointError(f"'img_feat_proj.0.weight' has {proj.shape[0]} output channels, "
                              f"but 'gs_embedding' has {channels}")

    cross_blocks = _count(state_dict, r"window_crossattn_blocks\.(\d+)\.norm\.weight")
    cross_layers = _count(state_dict, r"window_crossattn_blocks\.0\.blocks\.(\d+)\.norm2\.weight")
    self_blocks = _count(state_dict, r"gs_selfattn_blocks\.(\d+)\.norm\.weight")
    self_layers = _count(state_dict, r"gs_selfattn_blocks\.0\.blocks\.(\d+)\.norm1\.weight")
    for name, value in (("window_crossattn_blocks.<i>.norm.weight", cross_blocks),
                        ("window_crossattn_blocks.0.blocks.<i>.norm2.weight", cross_layers),
                        ("gs_selfattn_blocks.<i>.norm.weight", self_blocks),
                        ("gs_selfattn_blocks.0.blocks.<i>.norm1.weight", self_layers)):
        if value == 0:
            raise CheckpointError(f"not a GSASR decoder state dict: no key matches {name!r}")

    attn = "window_crossattn_blocks.0.blocks.0.window_cross_attn."
    if attn + "rope_freqs" in state_dict:
        form = "enhanced"
        freqs = need(attn + "rope_freqs", 3)
        heads = freqs.shape[1]
        if freqs.shape[0] != 2 or channels != heads * 2 * freqs.shape[2]:
            raise CheckpointError(f"{attn + 'rope_freqs'!r} has shape {tuple(freqs.shape)}, expected "
                                  f"(2, heads, channels / heads / 2) with channels = {channels}")
        positions = need(attn + "rope_t_x", 1).shape[0]
        if positions != seeds:
            raise CheckpointError(f"{attn + 'rope_t_x'!r} has {positions} positions, expected {seeds} "
                                  f"(one per seed of a {window}x{window} window)")
        need("conv_final.weight", 4)
    elif attn + "relative_position_bias_table" in state_dict:
        form = "paper"
        heads = need(attn + "relative_position_bias_table", 2).shape[1]
        index = need(attn + "relative_position_index", 2)
        if tuple(index.shape) != (seeds, seeds):
            # The official code allows a seed grid different from the pixel window; no release uses it.
            raise CheckpointError(f"{attn + 'relative_position_index'!r} has shape {tuple(index.shape)}, expected "
                                  f"({seeds}, {seeds}): seed grid and window must coincide")
        if channels % heads:
            raise CheckpointError(f"{attn + 'relative_position_bias_table'!r} gives {heads} heads, "
                                  f"which does not divide {channels} channels")
    else:
        raise CheckpointError(f"not a GSASR decoder state dict: neither {attn + 'rope_freqs'!r} (enhanced) nor "
                              f"{attn + 'relative_position_bias_table'!r} (paper) is present")

    return dict(form=form, in_channels=int(proj.shape[1]), channels=int(channels), num_heads=int(heads),
                window_size=int(window), num_crossattn_blocks=cross_blocks, num_crossattn_layers=cross_layers,
                num_selfattn_blocks=self_blocks, num_selfattn_layers=self_layers)
