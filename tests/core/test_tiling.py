"""Tiling in Gaussian space (gsasr/tiling.py, GSASRModel.upscale(tile=...)): seamless, covering, memory-safe."""
from __future__ import annotations

import math

import pytest
import torch
from gaussian_grids import grid_gaussians
from test_images import psnr, structured_image
from tolerances import RENDER_SUM_ORDER_ATOL, RENDER_SUM_ORDER_RTOL, TILED_VS_WHOLE_MIN_PSNR_DB

import gsasr
from gsasr import tiling
from gsasr.errors import InsufficientMemoryError, InvalidInputError
from gsasr.render import render_gaussians

SCALE = 2.7
CPU_OOM = "[enforce fail at alloc_cpu.cpp:83] DefaultCPUAllocator: not enough memory: you tried to allocate 1 bytes."


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from conftest import write_official_folder

    return gsasr.load_model(str(write_official_folder(tmp_path_factory.mktemp("m") / "tiny")))


@pytest.fixture(scope="module")
def whole_and_tiled(model):
    image = structured_image()
    whole = model.upscale(image, SCALE, tile=0, clamp=False)
    tiled = model.upscale(image, SCALE, tile=48, clamp=False)
    return image, whole, tiled


def test_tiled_equals_whole_image_up_to_lost_context(whole_and_tiled):
    image, whole, tiled = whole_and_tiled
    assert tiled.shape == whole.shape == (1, 3, math.floor(SCALE * 192), math.floor(SCALE * 160))
    assert torch.isfinite(tiled).all()
    value = psnr(tiled, whole)
    print(f"tiled (48) vs whole, x{SCALE}: PSNR {value:.2f} dB")
    assert value >= TILED_VS_WHOLE_MIN_PSNR_DB


def test_every_lr_pixel_gets_its_own_gaussians_in_global_coordinates():
    """Fake networks that put each Gaussian at its cell centre and tag it with its tile: after assembly every
    Gaussian is written (no leftover NaN), sits at the *global* cell centre, and came from the tile owning it."""
    hp, wp, d, tile = 40, 28, 4, 12
    calls = []

    def networks(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        gy, gx = torch.meshgrid((torch.arange(4 * h) + 0.5) / (4 * h), (torch.arange(4 * w) + 0.5) / (4 * w),
                                indexing="ij")
        out = torch.full((4 * h, 4 * w, 9), float(len(calls)))
        out[..., 7], out[..., 8] = gx, gy
        calls.append(x.shape)
        return out.view(1, -1, 9)

    padded = torch.rand(1, 3, hp, wp)
    got = tiling.tiled_gaussians(networks, padded, tile, d).view(4 * hp, 4 * wp, 9)
    assert torch.isfinite(got).all()
    gy, gx = torch.meshgrid((torch.arange(4 * hp) + 0.5) / (4 * hp), (torch.arange(4 * wp) + 0.5) / (4 * wp),
                            indexing="ij")
    assert torch.allclose(got[..., 7], gx, atol=1e-6) and torch.allclose(got[..., 8], gy, atol=1e-6)
    plan = tiling.plan_tiles((hp, wp), tile, tiling.context_margin(d))
    assert len(calls) == len(plan) == 4 * 3
    for i, t in enumerate(plan):
        y0, y1, x0, x1 = t.core
        assert (got[4 * y0:4 * y1, 4 * x0:4 * x1, 0] == i).all()
        ey0, ey1, ex0, ex1 = t.extent
        assert all(v % d == 0 for v in t.extent) and calls[i][-2:] == (ey1 - ey0, ex1 - ex0)


def test_tile_zero_is_the_untiled_path_exactly(model):
    image = structured_image(40, 36)
    gaussians = model.gaussians(image, SCALE)[0]
    from gsasr.model import output_geometry

    expected = model.render(gaussians, (40, 36), output_geometry((40, 36), SCALE))
    assert torch.equal(model.upscale(image, SCALE, tile=0, clamp=False)[0], expected)
    # A tile as big as the image, or the automatic choice for a small image, is the same path.
    assert torch.equal(model.upscale(image, SCALE, tile=400, clamp=False)[0], expected)
    assert torch.equal(model.upscale(image, SCALE, clamp=False)[0], expected)


@pytest.mark.parametrize("hw, tile", [((5, 7), 48), ((1, 40), 8), ((40, 1), 8), ((1, 1), 4), ((13, 30), 4)])
def test_small_and_one_pixel_wide_images(model, hw, tile):
    image = torch.rand(1, 3, *hw)
    out = model.upscale(image, SCALE, tile=tile)
    assert out.shape[-2:] == (math.floor(SCALE * hw[0]), math.floor(SCALE * hw[1]))
    assert torch.isfinite(out).all()


def test_strips_equal_one_render(model):
    image = structured_image(24, 20)
    gaussians = model.gaussians(image, SCALE)[0]
    canvas, out_hw = (math.floor(SCALE * 24), math.floor(SCALE * 20)), (math.floor(SCALE * 24), math.floor(SCALE * 20))
    whole = render_gaussians(gaussians, SCALE, canvas, region=(0, 0, *out_hw))
    strips = tiling.render_in_strips(gaussians, SCALE, canvas, out_hw, dmax=0.1, backend="auto",
                                     strip_bytes=3 * 4 * out_hw[1] * 5)  # 5 rows per strip
    assert torch.allclose(strips, whole, atol=RENDER_SUM_ORDER_ATOL, rtol=RENDER_SUM_ORDER_RTOL)


def test_strips_hand_the_renderer_whole_grid_rows_and_equal_one_render(monkeypatch):
    """Each strip gets a slice of whole grid rows (the layout the native renderers find candidates with), and the
    image is bit for bit the single render's."""
    hp, wp, scale = 24, 20, 3.0
    raw = grid_gaussians(hp, wp, seed=0, offset=0.4, extremes=False)
    canvas = (3 * hp, 3 * wp)
    whole = render_gaussians(raw, scale, canvas)
    seen = []

    def spy(gaussians, *args, **kwargs):
        seen.append((gaussians.shape[0], gaussians.data_ptr()))
        return render_gaussians(gaussians, *args, **kwargs)

    monkeypatch.setattr(tiling, "render_gaussians", spy)
    strips = tiling.render_in_strips(raw, scale, canvas, canvas, dmax=0.1, backend="auto",
                                     strip_bytes=3 * 4 * canvas[1] * 7)  # 7 rows per strip
    assert torch.equal(strips, whole)
    assert len(seen) == math.ceil(canvas[0] / 7)
    row_bytes = 4 * wp * raw.stride(0) * raw.element_size()
    for count, pointer in seen:
        assert count % (4 * wp) == 0 and 0 < count < raw.shape[0]
        assert (pointer - raw.data_ptr()) % row_bytes == 0  # a view starting at a grid row


def test_strips_of_gaussians_in_no_grid_layout_equal_one_render():
    """Gaussians no grid width fits (a prime count): each strip selects them one by one."""
    raw = grid_gaussians(12, 10, seed=0, offset=0.4, extremes=False)[:479]  # 479 is prime: no 4 Wp divides it
    canvas = (36, 30)
    strips = tiling.render_in_strips(raw, 3.0, canvas, canvas, dmax=0.1, backend="auto", strip_bytes=3 * 4 * 30 * 4)
    assert torch.equal(strips, render_gaussians(raw, 3.0, canvas))


@pytest.mark.parametrize("count", [480, 479])  # 12 grid rows of 40; no grid layout (479 is prime)
def test_a_nan_centre_in_a_strip_is_an_error_not_a_silent_gap(count):
    raw = grid_gaussians(12, 10, seed=0, offset=0.4, extremes=False)[:count]
    raw[5 * 40 + 3, 8] = float("nan")  # grid row 5
    with pytest.raises(InvalidInputError, match="NaN"):
        tiling.render_in_strips(raw, 3.0, (36, 30), (36, 30), dmax=0.1, backend="auto", strip_bytes=3 * 4 * 30 * 4)


def _fail_first_calls(monkeypatch, model, failures: int, message: str = CPU_OOM) -> list:
    """Make the first ``failures`` network runs raise like an allocator failure; returns the crop shapes run."""
    real = model._run_networks
    calls: list = []

    def networks(x, scale):
        calls.append(tuple(x.shape[-2:]))
        if len(calls) <= failures:
            raise RuntimeError(message)
        return real(x, scale)

    monkeypatch.setattr(model, "_run_networks", networks)
    return calls


def test_allocation_failure_retries_with_halved_tiles(model, monkeypatch):
    image = structured_image(64, 56)
    expected = model.upscale(image, SCALE, tile=24, clamp=False)
    calls = _fail_first_calls(monkeypatch, model, failures=1)
    progress = []
    out = model.upscale(image, SCALE, tile=48, clamp=False, progress=lambda d, t: progress.append((d, t)))
    assert torch.equal(out, expected)  # 48 -> 24: the very tiles of tile=24
    assert calls[0] == (64, 56)  # first attempt: core 48 + context covers the whole 64x56 tile
    n24 = tiling.count_tiles((64, 56), 24)
    assert progress == [(i, n24) for i in range(1, n24 + 1)]


def test_cuda_style_out_of_memory_message_is_recognised_and_untiled_first_try_also_retries(model, monkeypatch):
    image = structured_image(32, 32)
    expected = model.upscale(image, SCALE, tile=16, clamp=False)
    _fail_first_calls(monkeypatch, model, failures=1, message="CUDA out of memory. Tried to allocate 2.00 GiB")
    assert torch.equal(model.upscale(image, SCALE, clamp=False), expected)  # auto: whole image, then 16


def test_tile_zero_does_not_retry_and_persistent_failure_is_a_clear_error(model, monkeypatch):
    image = structured_image(32, 32)
    _fail_first_calls(monkeypatch, model, failures=10**6)
    with pytest.raises(RuntimeError, match="DefaultCPUAllocator"):
        model.upscale(image, SCALE, tile=0)
    with pytest.raises(InsufficientMemoryError, match="even with 8x8"):
        model.upscale(image, SCALE, tile=16)


def test_other_errors_are_not_retried(model, monkeypatch):
    calls = _fail_first_calls(monkeypatch, model, failures=1, message="some bug")
    with pytest.raises(RuntimeError, match="some bug"):
        model.upscale(structured_image(32, 32), SCALE, tile=8)
    assert len(calls) == 1


def test_progress_counts_tiles_over_the_batch_and_cancel_is_prompt(model, monkeypatch):
    batch = torch.rand(2, 3, 20, 16)
    per_image = tiling.count_tiles((20, 16), 8)
    calls = []
    model.upscale(batch, SCALE, tile=8, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 2 * per_image) for i in range(1, 2 * per_image + 1)]

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        if done == 2:
            raise Cancelled

    runs = _fail_first_calls(monkeypatch, model, failures=0)
    with pytest.raises(Cancelled):
        model.upscale(batch, SCALE, tile=8, progress=cancel)
    assert len(runs) == 2  # stopped right after the second tile


def test_interrupt_is_checked_inside_a_tile_and_leaves_no_hooks_behind(model):
    class Cancelled(BaseException):  # like ComfyUI's interrupt: not an Exception, so never taken for OOM
        pass

    checks = []

    def interrupt():
        checks.append(1)
        if len(checks) == 5:
            raise Cancelled

    image = torch.rand(1, 3, 20, 16)
    with pytest.raises(Cancelled):
        model.upscale(image, SCALE, tile=0, interrupt=interrupt, progress=lambda d, t: pytest.fail("finished"))
    assert all(not m._forward_pre_hooks for m in model.modules())
    counted = []
    out = model.upscale(image, SCALE, tile=0, interrupt=lambda: counted.append(1))
    assert torch.equal(out, model.upscale(image, SCALE, tile=0))
    n_layers = sum(1 for m in model.modules() if m is not model)
    assert len(counted) > n_layers // 2  # layer by layer (some run more than once, some not at all), and strips


@pytest.mark.parametrize("tile", [-1, 2.5, "big", True])
def test_bad_tiles_are_refused(model, tile):
    with pytest.raises(InvalidInputError, match="tile"):
        model.upscale(torch.rand(1, 3, 8, 8), 2, tile=tile)


def test_tile_helpers():
    assert tiling.round_tile(48, 12) == 48 and tiling.round_tile(50, 12) == 48 and tiling.round_tile(3, 16) == 16
    assert tiling.smaller_tile(48, (100, 100), 12) == 24
    assert tiling.smaller_tile(36, (100, 100), 12) == 24  # 18 -> floor to the window, at least 2 windows
    assert tiling.smaller_tile(24, (100, 100), 12) is None
    assert tiling.smaller_tile(0, (96, 48), 12) == 48
    assert tiling.is_out_of_memory(RuntimeError(CPU_OOM))
    assert tiling.is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert not tiling.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not tiling.is_out_of_memory(ValueError("not enough memory"))
    assert tiling.available_bytes(torch.device("cpu")) > 0


def test_auto_tile_from_memory():
    big = tiling.auto_tile((1080, 1920), (4320, 7680), 12, 32 * 1024, available=2**40, device_type="cuda")
    assert big == 0  # fits whole
    core = tiling.auto_tile((1080, 1920), (4320, 7680), 12, 32 * 1024, available=16 * 2**30, device_type="cuda")
    assert core > 0 and core % 12 == 0
    side = core + 2 * tiling.context_margin(12)
    assert side * side * 32 * 1024 <= 16 * 2**30 * tiling.MEMORY_FRACTION["cuda"]
    starved = tiling.auto_tile((1080, 1920), (4320, 7680), 12, 32 * 1024, available=2**20, device_type="cpu")
    assert starved == 2 * 12  # the minimum; the retry loop decides what happens next
