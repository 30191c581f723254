"""Winograd F(2x2, 3x3) convolutions (gsasr/archs/winograd.py) against the direct convolution, and when they apply."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tolerances import WINOGRAD_CONV_REL

from gsasr.archs import winograd

CASES = [  # (batch, in, out, height, width, padding (left, right, top, bottom), shuffle)
    (1, 192, 768, 12, 40, (1, 1, 0, 0), 2),  # UPNet's second conv on a strip with halo rows
    (1, 192, 768, 11, 40, (1, 1, 1, 0), 2),  # the first strip: a zero row on top
    (2, 128, 128, 7, 9, (1, 1, 1, 1), 1),  # odd output size: the last tile row and column are cropped
    (1, 128, 128, 14, 24, (1, 1, 0, 0), 1),  # a block conv's strip of window rows
    (1, 128, 512, 5, 6, (0, 1, 1, 0), 2),  # asymmetric padding
    (1, 128, 128, 1, 1, (1, 1, 1, 1), 1),  # a single pixel
    (1, 128, 128, 3, 3, (0, 0, 0, 0), 1),  # no padding: one output pixel
]


def _direct_float64(x, weight, bias, padding, shuffle):
    out = F.conv2d(F.pad(x.double(), padding), weight.double(), bias.double())
    return (F.pixel_shuffle(out, shuffle) if shuffle > 1 else out).permute(0, 2, 3, 1)


@pytest.mark.parametrize(("n", "cin", "cout", "h", "w", "padding", "shuffle"), CASES)
def test_matches_the_direct_convolution(n, cin, cout, h, w, padding, shuffle):
    torch.manual_seed(h * w + cout)
    x = torch.randn(n, cin, h, w)
    weight = torch.randn(cout, cin, 3, 3) / (3 * cin ** 0.5)  # O(1) outputs
    bias = torch.randn(cout)
    with torch.no_grad():
        fast = winograd.conv3x3(x.permute(0, 2, 3, 1).contiguous(), winograd.transform_weight(weight, bias, shuffle),
                                padding)
    exact = _direct_float64(x, weight, bias, padding, shuffle)
    assert fast.shape == exact.shape and fast.dtype == torch.float32
    assert (fast.double() - exact).abs().max() <= WINOGRAD_CONV_REL * exact.abs().max()


def test_strided_input_and_no_bias():
    """A channels-last view of a channels-first tensor (not contiguous), and a conv without bias."""
    torch.manual_seed(1)
    x = torch.randn(1, 128, 10, 12)
    weight = torch.randn(128, 128, 3, 3) / (3 * 128 ** 0.5)
    with torch.no_grad():
        fast = winograd.conv3x3(x.permute(0, 2, 3, 1), winograd.transform_weight(weight, None), (1, 1, 1, 1))
    exact = _direct_float64(x, weight, torch.zeros(128), (1, 1, 1, 1), 1)
    assert (fast.double() - exact).abs().max() <= WINOGRAD_CONV_REL * exact.abs().max()


def test_strips_starting_on_even_rows_give_the_whole_image_bitwise():
    """What the decoder's strip loops rely on: tiles start at a strip's first output row, so an even-aligned strip
    (its input with one halo row on each side) computes exactly the whole image's tiles."""
    torch.manual_seed(2)
    x = torch.randn(1, 20, 30, 128)
    weight = winograd.transform_weight(torch.randn(128, 128, 3, 3) / 30, torch.randn(128))
    with torch.no_grad():
        whole = winograd.conv3x3(x, weight, (1, 1, 1, 1))
        top = winograd.conv3x3(x[:, :7], weight, (1, 1, 1, 0))  # output rows 0-5
        middle = winograd.conv3x3(x[:, 5:15], weight, (1, 1, 0, 0))  # output rows 6-13
        bottom = winograd.conv3x3(x[:, 13:], weight, (1, 1, 0, 1))  # output rows 14-19
    assert torch.equal(torch.cat([top, middle, bottom], dim=1), whole)


# rows of 11 tiles: below the minimum block; a row in two blocks (6 + 5); one row; two rows; three rows and a
# ragged last block of rows
@pytest.mark.parametrize("block_tiles", [1, 5, 11, 23, 40])
def test_blocks_of_tiles_change_nothing(block_tiles, monkeypatch):
    """Big images are computed in blocks of tiles (cache-sized): any block size gives the same numbers."""
    torch.manual_seed(3)
    x = torch.randn(1, 9, 22, 128)
    weight = winograd.transform_weight(torch.randn(256, 128, 3, 3) / 30, torch.randn(256), 2)
    with torch.no_grad():
        whole = winograd.conv3x3(x, weight, (1, 1, 1, 1))
        per_tile = x.element_size() * (16 * 128 + 24 * 256)
        monkeypatch.setattr(winograd, "BLOCK_BYTES", block_tiles * per_tile)
        blocked = winograd.conv3x3(x, weight, (1, 1, 1, 1))
    assert torch.equal(blocked, whole)


@pytest.mark.parametrize("allow_winograd", [True, False])
@pytest.mark.parametrize(("padding", "shuffle"), [((1, 1, 0, 1), 2), ((0, 1, 1, 0), 1)])
def test_channels_last_conv_both_ways(allow_winograd, padding, shuffle):
    """The decoder's one entry point: a module's conv (+ pixel shuffle) on channels-last strips, Winograd or
    direct, both equal to the float64 convolution (the direct one to float32 rounding of its own)."""
    torch.manual_seed(4)
    conv = torch.nn.Conv2d(128, 256, 3)
    x = torch.randn(1, 6, 10, 128)
    with torch.no_grad():
        run = winograd.ChannelsLastConv(conv, x, shuffle, allow_winograd=allow_winograd)
        assert (run.winograd is not None) == allow_winograd
        out = run(x, padding)
    exact = _direct_float64(x.permute(0, 3, 1, 2), conv.weight, conv.bias, padding, shuffle)
    assert out.shape == exact.shape
    assert (out.double() - exact).abs().max() <= WINOGRAD_CONV_REL * exact.abs().max()


def test_rejects_what_it_cannot_do():
    weight = torch.randn(12, 4, 3, 3)
    with pytest.raises(ValueError, match="pixel-shuffled by 2"):
        winograd.transform_weight(torch.randn(10, 4, 3, 3), None, 2)
    with pytest.raises(ValueError, match="no output"):
        winograd.conv3x3(torch.randn(1, 1, 5, 4), winograd.transform_weight(weight, None), (0, 0, 0, 0))


def test_applies_only_to_wide_float32_cpu_inference(monkeypatch):
    wide = torch.randn(192, 192, 3, 3)
    x = torch.randn(1, 192, 8, 8)
    with torch.no_grad():
        assert winograd.applies(x, wide)
        assert not winograd.applies(x.double(), wide.double())  # float64 is the exact reference path
        assert not winograd.applies(torch.randn(1, 64, 8, 8), torch.randn(64, 64, 3, 3))  # too narrow to gain
        assert not winograd.applies(x, torch.randn(192, 192, 1, 1))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not winograd.applies(x, wide)  # autocast keeps its own (low-precision) kernels
        monkeypatch.setenv("GSASR_WINOGRAD", "0")
        assert not winograd.applies(x, wide)
    assert not winograd.applies(x, wide)  # with autograd on (not inference)
