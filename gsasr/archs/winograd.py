"""3x3 convolutions by Winograd's minimal filtering F(2x2, 3x3), for the decoder's wide convolutions on CPUs.

Why: on a CPU the decoder's 3x3 convolutions (UPNet's two 192 -> 768-channel convs, the second on the 2x seed
grid, and the enhanced form's block convs) run at matmul speed already, so the only way to make them faster is to
do fewer multiplications. F(2x2, 3x3) computes each 2 x 2 block of outputs from a 4 x 4 input tile with 16
channel products instead of 36 (2.25x fewer). The transforms only add and subtract (the weight transform halves),
so in float32 the result is as accurate as the direct convolution (measured ~5e-7 against float64, direct ~2e-6).

Layout: channels last in and out, which is the decoder's own layout (tokens), so no transposes are needed around
it; with ``shuffle=2`` the output comes out already pixel-shuffled (``nn.PixelShuffle(2)`` of the convolution).

A tile's arithmetic depends only on its input, and tiles start at the first output row and column. Convolving a
strip whose first output row is even, as part of a bigger image, therefore gives bitwise the same rows as the
whole image (the callers keep strips even-aligned).

Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016 (the transform matrices).
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .workspace import Workspace

# The filter transform G (4 x 3). The data transform B^T and the output transform A^T are written out as
# additions where they are applied.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))

# Below this many input channels the 16 small products are less efficient than one direct convolution
# (measured: 64 -> 64 channels is no faster), so narrow convolutions stay direct.
MIN_CHANNELS = 128

# Tiles are transformed, multiplied and transformed back in blocks of at most about this many bytes of
# intermediates (4x the output for F(2x2, 3x3)). The decoder's strips (~40 MB at most) are one block each: on a
# 2-core Zen 3 the decoder ran as fast or faster with whole strips than with 16-48 MB blocks. Whole images are not:
# a 128^2 x 180-channel conv in one 70 MB block ran at half the speed of 8-32 MB blocks, below the direct conv.
BLOCK_BYTES = 64 << 20
# MKL computes products of fewer than 4 rows with other kernels, which round differently (measured); blocks of at
# least this many tiles keep the result independent of how an image is cut into blocks and strips.
MIN_BLOCK_TILES = 4


class WinogradWeight(NamedTuple):
    """A conv's weight in the Winograd domain: ``u`` (16, Cin, Cout) and ``bias`` (Cout,), output channels in
    (i, j, c) order when ``shuffle`` > 1 so the output transform can write pixel-shuffled rows directly."""
    u: torch.Tensor
    bias: torch.Tensor | None
    shuffle: int


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`conv3x3` should replace the direct convolution of ``x`` by ``weight``.

    Only float32 CPU inference (float64 stays the exact reference path; autocast and GPUs keep their own kernels),
    only wide 3x3 convolutions, and not when ``GSASR_WINOGRAD=0`` (to compare with the direct convolution).
    """
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and tuple(weight.shape[2:]) == (3, 3) and weight.shape[1] >= MIN_CHANNELS
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and os.environ.get("GSASR_WINOGRAD", "1") != "0")


def transform_weight(weight: torch.Tensor, bias: torch.Tensor | None, shuffle: int = 1) -> WinogradWeight:
    """G g G^T for every (out, in) channel pair, computed in float64 and rounded once. ``shuffle``: the factor of
    a pixel shuffle that follows the conv (its output channels c * s^2 + i * s + j become (i, j, c))."""
    cout, cin = weight.shape[:2]
    if cout % (shuffle * shuffle):
        raise ValueError(f"{cout} output channels cannot be pixel-shuffled by {shuffle}")
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ik,ockl,jl->ijco", g, weight.double(), g).reshape(16, cin, cout)
    if bias is not None:
        bias = bias.double()
    if shuffle > 1:
        per = cout // (shuffle * shuffle)
        u = u.view(16, cin, per, shuffle, shuffle).permute(0, 1, 3, 4, 2).reshape(16, cin, cout)
        if bias is not None:
            bias = bias.view(per, shuffle, shuffle).permute(1, 2, 0).reshape(cout)
    return WinogradWeight(u.to(weight.dtype).contiguous(),
                          None if bias is None else bias.to(weight.dtype), shuffle)


def conv3x3(x: torch.Tensor, weight: WinogradWeight, padding: tuple[int, int, int, int],
            workspace: Workspace | None = None, output_in_workspace: bool = True) -> torch.Tensor:
    """A stride-1 3x3 convolution of channels-last ``x`` (N, H, W, Cin) with zero ``padding`` (left, right, top,
    bottom; ``F.pad``'s order) -> (N, s Ho, s Wo, Cout / s^2), Ho = H + top + bottom - 2, Wo likewise,
    s = ``weight.shuffle``.

    Equal to ``F.conv2d`` (then ``F.pixel_shuffle``) up to float32 rounding. Computed in blocks of tiles (see
    BLOCK_BYTES); tiles are independent, so blocks change no number. With a ``workspace`` the intermediates are
    its buffers ``winograd_*``, and so is the output (valid until the next call with that workspace) unless
    ``output_in_workspace`` is false.
    """
    workspace = workspace or Workspace(x.device)
    n, h, w, cin = x.shape
    left, right, top, bottom = padding
    out_h, out_w = h + top + bottom - 2, w + left + right - 2
    if out_h < 1 or out_w < 1:
        raise ValueError(f"a 3x3 convolution of {h}x{w} with padding {padding} has no output")
    th, tw = (out_h + 1) // 2, (out_w + 1) // 2  # 2 x 2 output tiles; an odd last row/column is cropped
    x = F.pad(x, (0, 0, left, right + 2 * tw - out_w, top, bottom + 2 * th - out_h))  # (N, 2 th + 2, 2 tw + 2, C)
    s = weight.shuffle
    cout = weight.u.shape[2]
    shape = (n, th, 2, s, tw, 2, s, cout // (s * s))
    out = (workspace.take("winograd_out", shape, x.dtype) if output_in_workspace
           else torch.empty(shape, dtype=x.dtype, device=x.device))

    # Transformed input, products and half-transformed output of one tile: 16 Cin + 16 Cout + 8 Cout numbers.
    # At least MIN_BLOCK_TILES per block: matrix-product kernels may round differently for fewer rows.
    tiles = max(MIN_BLOCK_TILES, BLOCK_BYTES // (x.element_size() * n * (16 * cin + 24 * cout)))
    rows = min(th, max(1, tiles // tw))
    cols = tw if tiles >= tw else -(-tw // (tw // tiles))  # split a row into blocks of at least `tiles` tiles
    for r0 in range(0, th, rows):
        r1 = min(r0 + rows, th)
        for c0 in range(0, tw, cols):
            c1 = min(c0 + cols, tw)
            _tiles(x[:, 2 * r0:2 * r1 + 2, 2 * c0:2 * c1 + 2], weight, out[:, r0:r1, :, :, c0:c1], workspace)
    out = out.view(n, 2 * th * s, 2 * tw * s, -1)
    if (2 * th, 2 * tw) != (out_h, out_w):
        out = out[:, :out_h * s, :out_w * s]
    return out


class ChannelsLastConv:
    """A 3x3 ``nn.Conv2d`` (then ``nn.PixelShuffle(shuffle)``) applied to channels-last strips: one Winograd
    convolution per call where :func:`applies` (weights transformed once, here), the direct convolution
    otherwise. ``allow_winograd=False`` keeps it direct (callers whose strips may start on odd rows)."""

    def __init__(self, conv: torch.nn.Conv2d, like: torch.Tensor, shuffle: int = 1, allow_winograd: bool = True):
        self.conv, self.shuffle = conv, shuffle
        self.winograd = (transform_weight(conv.weight, conv.bias, shuffle)
                         if allow_winograd and applies(like, conv.weight) else None)

    def __call__(self, x: torch.Tensor, padding: tuple[int, int, int, int], workspace: Workspace | None = None,
                 output_in_workspace: bool = True) -> torch.Tensor:
        """(N, H, W, Cin) with zero ``padding`` (left, right, top, bottom) -> (N, s Ho, s Wo, C'), as
        :func:`conv3x3` (the direct path's output is a channels-last view of a new tensor)."""
        if self.winograd is not None:
            return conv3x3(x, self.winograd, padding, workspace, output_in_workspace)
        left, right, top, bottom = padding
        x = x.permute(0, 3, 1, 2)
        if top or bottom:
            x = F.pad(x, (0, 0, top, bottom))
        if left == right:  # the conv pads the columns itself, no copy
            out = F.conv2d(x, self.conv.weight, self.conv.bias, padding=(0, left))
        else:
            out = F.conv2d(F.pad(x, (left, right)), self.conv.weight, self.conv.bias)
        if self.shuffle > 1:
            out = F.pixel_shuffle(out, self.shuffle)
        return out.permute(0, 2, 3, 1)


def _tiles(x: torch.Tensor, weight: WinogradWeight, out: torch.Tensor, workspace: Workspace) -> None:
    """One block of tiles: padded input rows and columns ``x`` (N, 2 th + 2, 2 tw + 2, Cin) -> ``out``
    (N, th, 2, s, tw, 2, s, C'), a view of the whole output."""
    n, th, tw, cin = x.shape[0], (x.shape[1] - 2) // 2, (x.shape[2] - 2) // 2, x.shape[3]

    # Data transform V = B^T d B on every 4 x 4 tile (tiles overlap by 2): rows, then columns.
    rows = [x[:, k:k + 2 * th:2] for k in range(4)]  # tile row k of every tile row, (N, th, W', Cin)
    rows = (rows[0] - rows[2], rows[1] + rows[2], rows[2] - rows[1], rows[1] - rows[3])
    v = workspace.take("winograd_data", (4, 4, n, th, tw, cin), x.dtype)
    for i, r in enumerate(rows):
        cols = [r[:, :, k:k + 2 * tw:2] for k in range(4)]
        torch.sub(cols[0], cols[2], out=v[i, 0])
        torch.add(cols[1], cols[2], out=v[i, 1])
        torch.sub(cols[2], cols[1], out=v[i, 2])
        torch.sub(cols[1], cols[3], out=v[i, 3])

    # The 16 channel products: one batched matrix product over the block's tiles.
    cout = weight.u.shape[2]
    m = workspace.take("winograd_products", (16, n * th * tw, cout), x.dtype)
    torch.bmm(v.view(16, -1, cin), weight.u, out=m)
    m = m.view(4, 4, n, th, tw, cout)
    if weight.bias is not None:
        m[1, 1] += weight.bias  # A^T has ones in column 1 of both rows: M[1][1] reaches all 4 outputs once

    # Output transform Y = A^T M A, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]: rows, then columns into the output.
    s = weight.shuffle
    half = workspace.take("winograd_half", (2, 4, n, th, tw, cout), x.dtype)
    torch.add(m[0], m[1], out=half[0])
    half[0] += m[2]
    torch.sub(m[1], m[2], out=half[1])
    half[1] -= m[3]
    # (N, th, tw, s, s, C') -> (N, th, s, tw, s, C'): the sub-pixel rows and columns of the shuffle
    part = half.view(2, 4, n, th, tw, s, s, -1).permute(0, 1, 2, 3, 5, 4, 6, 7)
    for a in range(2):
        torch.add(part[a, 0], part[a, 1], out=out[:, :, a, :, :, 0])
        out[:, :, a, :, :, 0] += part[a, 2]
        torch.sub(part[a, 1], part[a, 2], out=out[:, :, a, :, :, 1])
        out[:, :, a, :, :, 1] -= part[a, 3]
