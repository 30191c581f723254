"""MATLAB-style bicubic downsampling (gsasr.imresize): exactness on constants, antialiasing, sizes, and agreement
with Pillow's independent antialiased bicubic away from the borders (the two differ only in edge handling)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gsasr.imresize import imresize, resize_weights


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 3.7, 1 / 4, 2.5])
def test_constant_images_stay_exactly_constant(scale):
    image = torch.full((3, 37, 29), 0.25, dtype=torch.float64)
    out = imresize(image, scale)
    assert torch.equal(out, torch.full_like(out, 0.25)) or (out - 0.25).abs().max() < 1e-15


def test_output_sizes_round_up_like_matlab():
    assert imresize(torch.zeros(1, 37, 29), 1 / 4).shape[-2:] == (10, 8)
    assert imresize(torch.zeros(1, 720, 720), 1 / 3.7).shape[-2:] == (195, 195)
    assert imresize(torch.zeros(1, 10, 10), 2.5).shape[-2:] == (25, 25)


def test_weights_sum_to_one_and_indices_mirror_inside_the_image():
    indices, weights = resize_weights(13, 4, 1 / 3.3)
    assert torch.allclose(weights.sum(1), torch.ones(4, dtype=torch.float64))
    assert int(indices.min()) >= 0 and int(indices.max()) <= 12


def test_downsampling_is_antialiased():
    """A 1-pixel checkerboard has no content a third-size image can show: it must become (nearly) flat grey, where
    plain bicubic sampling picks single black or white pixels."""
    board = ((torch.arange(66)[:, None] + torch.arange(66)[None, :]) % 2).double()[None]
    out = imresize(board, 1 / 3)[0, 4:-4, 4:-4]
    assert (out - 0.5).abs().max() < 1e-3
    plain = torch.nn.functional.interpolate(board[None], scale_factor=1 / 3, mode="bicubic", align_corners=False)
    assert (plain[0, 0, 4:-4, 4:-4] - 0.5).abs().max() > 0.4


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_matches_pillows_antialiased_bicubic_in_the_interior(factor):
    rng = np.random.default_rng(factor)
    image = rng.random((96, 72)).astype(np.float32)
    ours = imresize(torch.from_numpy(image)[None], 1 / factor)[0].numpy()
    pil = np.asarray(Image.fromarray(image, mode="F").resize((72 // factor, 96 // factor), Image.BICUBIC))
    margin = 2
    assert np.abs(ours - pil)[margin:-margin, margin:-margin].max() < 1e-6
