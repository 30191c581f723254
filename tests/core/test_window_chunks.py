"""Chunked traversal of the decoder's seed grid (gsasr/archs/window_chunks.py) against whole-grid operations:
rolled windows, per-token maps and the strip-wise 3x3 convolution."""
from __future__ import annotations

import pytest
import torch

from gsasr.archs.blocks import window_partition, window_reverse
from gsasr.archs.window_chunks import WindowChunks

WINDOW = 4
# (batch, h, w, tokens per chunk): one window per chunk, a chunk smaller than a window, ragged chunks over two
# images, and everything in one chunk
CASES = [(1, 8, 12, 16), (1, 12, 8, 5), (2, 8, 12, 48), (2, 12, 4, 10_000)]


def _stream(batch: int, h: int, w: int, channels: int = 6) -> torch.Tensor:
    torch.manual_seed(0)
    return window_partition(torch.randn(batch, h, w, channels), WINDOW)


@pytest.mark.parametrize("batch, h, w, tokens", CASES)
@pytest.mark.parametrize("shift", [0, 2])
def test_update_on_rolled_windows_equals_roll_apply_roll_back(batch, h, w, tokens, shift):
    """A per-window operation (here: each window minus its own mean, times its image's number) applied to chunks of
    the grid rolled by -shift equals rolling the whole grid, applying it to every window and rolling back."""
    x = _stream(batch, h, w)
    chunks = WindowChunks(batch, h, w, WINDOW, tokens, x.device)

    def per_window(t: torch.Tensor, image: int) -> torch.Tensor:
        return (t - t.mean(dim=1, keepdim=True)) * (image + 2)

    rolled = torch.roll(window_reverse(x, WINDOW, h, w), (-shift, -shift), (1, 2))
    windows = window_partition(rolled, WINDOW)
    per_image = windows.shape[0] // batch
    done = torch.cat([per_window(windows[i * per_image:(i + 1) * per_image], i) for i in range(batch)])
    expected = window_partition(torch.roll(window_reverse(done, WINDOW, h, w), (shift, shift), (1, 2)), WINDOW)

    seen = []

    def step(chunk: torch.Tensor, image: int, w0: int, w1: int) -> None:
        assert chunk.shape[0] == w1 - w0 and w0 // per_image == image == (w1 - 1) // per_image
        seen.append((w0, w1))
        chunk.copy_(per_window(chunk, image))

    chunks.update(x, step, shift)
    assert torch.equal(x, expected)
    covered = [i for w0, w1 in seen for i in range(w0, w1)]
    assert covered == list(range(x.shape[0]))  # every window once, in order


@pytest.mark.parametrize("batch, h, w, tokens", CASES)
def test_map_equals_whole_tensor(batch, h, w, tokens):
    x = _stream(batch, h, w)
    chunks = WindowChunks(batch, h, w, WINDOW, tokens, x.device)
    out = chunks.map(torch.tanh, x, out=torch.empty_like(x))
    assert torch.equal(out, torch.tanh(x))
    assert chunks.map(torch.tanh, x, out=x) is x and torch.equal(x, out)  # in place


@pytest.mark.parametrize("batch, h, w, tokens", CASES)
def test_conv_add_equals_whole_grid_conv(batch, h, w, tokens):
    """Strips of window rows with one-row halos (zeros at the image edges) give the zero-padded whole-grid conv."""
    x = _stream(batch, h, w)
    conv = torch.nn.Conv2d(6, 6, 3, 1, 1)
    dst = _stream(batch, h, w, channels=6) * 0.5
    image = window_reverse(x, WINDOW, h, w).permute(0, 3, 1, 2)
    expected = dst + window_partition(conv(image).permute(0, 2, 3, 1), WINDOW)
    with torch.no_grad():
        WindowChunks(batch, h, w, WINDOW, tokens, x.device).conv_add(conv, x, dst)
    torch.testing.assert_close(dst, expected, rtol=0, atol=1e-6)


def test_scratch_is_reused_while_the_shape_holds():
    x = _stream(1, 8, 8)
    chunks = WindowChunks(1, 8, 8, WINDOW, 16, x.device)
    first = chunks.scratch(x)
    assert chunks.scratch(x) is first and first.shape == x.shape
    assert chunks.scratch(x.double()).dtype == torch.float64
