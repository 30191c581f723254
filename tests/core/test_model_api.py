"""The public API's contract: output sizes, padding, channels, batches, dtypes and clear errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import gsasr
from gsasr.errors import InvalidInputError
from gsasr.model import mirror_indices, output_geometry, pad_to_multiple


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from conftest import write_official_folder

    return gsasr.load_model(str(write_official_folder(tmp_path_factory.mktemp("m") / "tiny")))


@pytest.mark.parametrize("h, w", [(5, 7), (12, 12), (13, 30), (23, 31)])
def test_padding_equals_the_official_reflect_pad_where_that_works(h: int, w: int):
    image = torch.rand(1, 3, h, w)
    multiple = 12
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph < h and pw < w:  # the official F.pad(reflect) only works here
        assert torch.equal(pad_to_multiple(image, multiple), F.pad(image, (0, pw, 0, ph), mode="reflect"))
    assert pad_to_multiple(image, multiple).shape[-2:] == (h + ph, w + pw)


def test_padding_tiny_sides_keeps_mirroring():
    assert mirror_indices(1, 5).tolist() == [0, 0, 0, 0, 0]
    assert mirror_indices(2, 6).tolist() == [0, 1, 0, 1, 0, 1]
    assert mirror_indices(3, 8).tolist() == [0, 1, 2, 1, 0, 1, 2, 1]


@pytest.mark.parametrize("scale", [1.01, 1.5, 2.3, 3.7, 5.5, 12.0, 30.0])
def test_output_size_is_floor_of_scale_times_input(model, scale: float):
    image = torch.rand(1, 3, 6, 5)
    out = model.upscale(image, scale)
    assert out.shape == (1, 3, math.floor(scale * 6), math.floor(scale * 5))
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("hw", [(1, 1), (1, 9), (9, 1), (2, 3)])
def test_tiny_images_work(model, hw):
    out = model.upscale(torch.rand(1, 3, *hw), 4)
    assert out.shape[-2:] == (4 * hw[0], 4 * hw[1]) and torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(20, 15), (24, 18), (17, 40), (7, 6)])
def test_exact_size(model, size):
    out = model.upscale(torch.rand(1, 3, 6, 5), size=size)
    assert out.shape[-2:] == size


def test_size_keeping_aspect_ratio_uses_one_scale():
    g = output_geometry((1080, 1920), size=(2160, 3840))
    assert g.scale_hw[0] == g.scale_hw[1] and g.out_hw == (2160, 3840)
    g = output_geometry((7, 3), size=(16, 7))  # 16/7 = 2.2857 -> floor(3 * 2.2857) = 6 != 7: needs two scales
    assert g.out_hw == (16, 7) and math.floor(g.scale_hw[0] * 7) == 16 and math.floor(g.scale_hw[1] * 3) == 7


def test_batches_match_single_images(model):
    torch.manual_seed(3)
    batch = torch.rand(3, 3, 7, 9)
    out = model.upscale(batch, 2.5, clamp=False)
    for i in range(3):
        assert torch.allclose(out[i:i + 1], model.upscale(batch[i:i + 1], 2.5, clamp=False), atol=1e-6)


def test_greyscale_and_rgba(model):
    grey = model.upscale(torch.rand(2, 1, 5, 6), 2)
    assert grey.shape == (2, 1, 10, 12)
    rgba = torch.rand(1, 4, 5, 6)
    rgba[:, 3] = 1.0
    out = model.upscale(rgba, 3)
    assert out.shape == (1, 4, 15, 18)
    assert torch.allclose(out[:, 3], torch.ones(1, 15, 18))  # an opaque alpha stays opaque
    assert torch.allclose(out[:, :3], model.upscale(rgba[:, :3], 3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_output_has_the_input_dtype(model, dtype):
    out = model.upscale(torch.rand(1, 3, 5, 5).to(dtype), 2)
    assert out.dtype == dtype


def test_progress_is_reported_per_image_and_can_cancel(model):
    calls = []
    model.upscale(torch.rand(2, 3, 4, 4), 2, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        model.upscale(torch.rand(2, 3, 4, 4), 2, progress=cancel)


@pytest.mark.parametrize("scale", [1.0, 0.5, -2, float("nan"), float("inf"), 33, "abc", None])
def test_bad_scales_are_refused(model, scale):
    with pytest.raises(InvalidInputError):
        model.upscale(torch.rand(1, 3, 4, 4), scale)


@pytest.mark.parametrize("image, match", [
    (torch.rand(3, 4, 4), "B, C, H, W"),
    (torch.rand(1, 2, 4, 4), "1, 3 or 4 channels"),
    (torch.rand(1, 4, 4, 3)[:, :, :, :0], "channels|empty"),
    ((torch.rand(1, 3, 4, 4) * 255).to(torch.uint8), "floating point"),
    (torch.full((1, 3, 4, 4), float("nan")), "NaN"),
])
def test_bad_images_are_refused(model, image, match):
    with pytest.raises(InvalidInputError, match=match):
        model.upscale(image, 2)


def test_bad_sizes_are_refused(model):
    for size in [(0, 4), (4,), "4K", (4, 4)]:  # (4, 4) from 4x4 is scale 1: not an upscale
        with pytest.raises(InvalidInputError):
            model.upscale(torch.rand(1, 3, 4, 4), size=size)
    with pytest.raises(InvalidInputError, match="exactly one"):
        model.upscale(torch.rand(1, 3, 4, 4), 2, size=(8, 8))
    with pytest.raises(InvalidInputError, match="gigapixel"):
        model.upscale(torch.rand(1, 3, 4000, 4000), 30)


def test_amp_modes(model):
    image = torch.rand(1, 3, 8, 8)
    full = model.upscale(image, 2)
    for amp in ("auto", "bf16"):
        out = model.upscale(image, 2, amp=amp)
        assert out.shape == full.shape and torch.isfinite(out).all()
    with pytest.raises(InvalidInputError, match="amp"):
        model.upscale(image, 2, amp="fp8")


def test_fp16_on_a_cpu_warns_once_per_call_not_per_tile(model, caplog):
    image = torch.rand(1, 3, 40, 40)
    with caplog.at_level("WARNING", logger="gsasr"):
        model.upscale(image, 2, amp="fp16", tile=12)  # several tiles
        model.upscale(image, 2, amp="auto", tile=12)
    slow = [r for r in caplog.records if "much slower than amp=off" in r.getMessage()]
    assert len(slow) == 1
