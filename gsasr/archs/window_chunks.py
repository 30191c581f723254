"""Running the decoder's attention layers over a few windows at a time, updating the token stream in place.

Every decoder attention layer is per-token work (LayerNorm, MLPs, the scale term) around an attention that only
mixes tokens of one window. So a layer can run on a chunk of windows at a time: the chunk's activations stay a few
MB (in the CPU caches, and reused from the allocator's heap) instead of one tensor per operation for the whole
image, which at 256^2 seeds is 50 MB apiece and costs fresh zeroed pages (page faults) on every allocation.

Shifted self-attention layers attend inside windows of the seed grid rolled cyclically by -shift. Because
everything else in the layer is per token, a chunk of *rolled* windows can be gathered from the unrolled stream,
run through the whole layer and written back: the roll and the roll back become one gather and one scatter of the
chunk, with the same numbers as rolling the whole grid twice.

The enhanced form's 3x3 convolutions on the seed grid run on strips of window rows with a one-row halo, adding into
the token stream, so no block allocates a whole-image tensor: beyond the stream itself the decoder's blocks use
one reusable scratch stream and chunk-sized temporaries.

In-place updates (``x += term``) give what ``x = x + term`` gave: the stream is float32 (LayerNorm keeps float32
under autocast) or the model's own dtype, and every term has that dtype or autocast's lower one, so the sum never
needed promoting beyond the stream's dtype.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import winograd
from .blocks import window_partition, window_reverse
from .low_precision import add_
from .workspace import Workspace

# (chunk (n, T, C), image index, first window, end window) -> None; updates the chunk in place.
ChunkStep = Callable[[torch.Tensor, int, int, int], None]


class WindowChunks:
    """The seed grid of one decoder forward: ``batch`` images of h x w tokens in window layout (B * nW, T, C),
    windows row-major per image, visited ``max_tokens`` tokens (whole windows, never crossing images) at a time."""

    def __init__(self, batch: int, h: int, w: int, window: int, max_tokens: int, device: torch.device):
        self.batch, self.h, self.w, self.window = batch, h, w, window
        self.tokens = window * window
        self.windows_per_image = (h // window) * (w // window)
        self.windows_per_chunk = max(1, max_tokens // self.tokens)
        self.device = device
        self._rolled_order: dict[int, torch.Tensor] = {}
        self._scratch: torch.Tensor | None = None
        self.workspace = Workspace(device)  # the Winograd convolutions' intermediates, reused strip after strip

    def rolled_order(self, shift: int) -> torch.Tensor:
        """Flat token indices such that token j of the grid rolled by -shift (in window layout) is token
        ``order[j]`` of the unrolled window layout. Built once per shift by rolling an index grid."""
        if shift not in self._rolled_order:
            count = self.batch * self.windows_per_image * self.tokens
            ids = torch.arange(count, device=self.device).view(-1, self.tokens, 1)
            image = torch.roll(window_reverse(ids, self.window, self.h, self.w), (-shift, -shift), (1, 2))
            self._rolled_order[shift] = window_partition(image, self.window).flatten()
        return self._rolled_order[shift]

    def update(self, x: torch.Tensor, step: ChunkStep, shift: int = 0) -> None:
        """Call ``step`` on every chunk of windows of ``x`` (B * nW, T, C), which it updates in place.

        With ``shift``, chunks are windows of the grid rolled by -shift, gathered from ``x`` and scattered back;
        ``step`` then sees the window range of the rolled grid. Otherwise chunks are views into ``x``.
        """
        flat = x.view(-1, x.shape[-1])
        order = self.rolled_order(shift) if shift else None
        for image in range(self.batch):
            first = image * self.windows_per_image
            for w0 in range(first, first + self.windows_per_image, self.windows_per_chunk):
                w1 = min(w0 + self.windows_per_chunk, first + self.windows_per_image)
                if order is None:
                    step(x[w0:w1], image, w0, w1)
                    continue
                index = order[w0 * self.tokens:w1 * self.tokens]
                chunk = flat.index_select(0, index).view(w1 - w0, self.tokens, -1)
                step(chunk, image, w0, w1)
                flat.index_copy_(0, index, chunk.view(-1, chunk.shape[-1]))

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out = fn(x) for a per-token ``fn``, chunk by chunk (``out`` may be ``x``). Returns ``out``."""
        for w0 in range(0, x.shape[0], self.windows_per_chunk):
            w1 = w0 + self.windows_per_chunk
            out[w0:w1] = fn(x[w0:w1])
        return out

    def scratch(self, like: torch.Tensor) -> torch.Tensor:
        """A token-stream-sized buffer shared by everything run with these chunks (one block at a time)."""
        if self._scratch is None or self._scratch.shape != like.shape or self._scratch.dtype != like.dtype:
            self._scratch = torch.empty_like(like)
        return self._scratch

    def conv_add(self, conv: nn.Conv2d, src: torch.Tensor, dst: torch.Tensor) -> None:
        """dst += conv(src) for a 3x3, stride-1, zero-padded ``conv`` on the seed grid, both in window layout.

        Computed in strips of window rows. A strip's input is its own rows plus the last seed row of the window row
        above and the first of the one below (zeros at the image edges, the padding of the whole-grid conv).
        Where it applies the conv is a Winograd convolution (winograd.py); strips then start on even rows (even
        windows), so any strip height gives the same numbers.
        """
        ws, c = self.window, src.shape[-1]
        channels_last_conv = winograd.ChannelsLastConv(conv, src, allow_winograd=ws % 2 == 0)
        across = self.w // ws  # windows per window row
        window_rows = self.h // ws
        rows_per_strip = max(1, self.windows_per_chunk // across)
        grid = src.view(self.batch, window_rows, across, ws, ws, c)  # (B, window row, window col, y, x, C)

        def seed_row(image: int, window_row: int, y: int) -> torch.Tensor:
            """Seed row y of a window row, (1, w, C); zeros outside the grid."""
            if not 0 <= window_row < window_rows:
                return src.new_zeros(1, self.w, c)
            return grid[image, window_row, :, y].reshape(1, self.w, c)

        for image in range(self.batch):
            for r0 in range(0, window_rows, rows_per_strip):
                r1 = min(r0 + rows_per_strip, window_rows)
                rows = grid[image, r0:r1].permute(0, 2, 1, 3, 4).reshape((r1 - r0) * ws, self.w, c)
                strip = torch.cat([seed_row(image, r0 - 1, ws - 1), rows, seed_row(image, r1, 0)])
                out = channels_last_conv(strip[None], (1, 1, 0, 0), self.workspace)
                out = window_partition(out, ws)  # (windows of the strip, T, C)
                first = (image * window_rows + r0) * across
                add_(dst[first:first + out.shape[0]], out)
