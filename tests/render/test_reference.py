"""The PyTorch reference rasteriser: golden parity, dense oracles, regions, the k-sigma cut, backend choice, checks.

Two oracles are written here from GSASR_SPEC.md A.4/B, independently of gsasr/render/reference.py:
* ``_dense_kernel``: every Gaussian on every pixel, [N, H, W] at once, with the official kernel's float32
  arithmetic (so it must agree with the reference up to the order of the float32 sums, whatever the inputs);
* ``_dense_float64``: the pixel-space formula of the spec (mean at mean_x * W, std sigma * s / 1.2 pixels,
  pixel centres at j + 0.5) in float64, windowed by the spec's float32 test; it checks the unit conversions.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from conftest import golden_render_params, render_golden_case
from tolerances import (
    GOLDEN_RENDER_ABS,
    RENDER_FLOAT64_ATOL,
    RENDER_FLOAT64_RTOL,
    RENDER_SUM_ORDER_ATOL,
    RENDER_SUM_ORDER_RTOL,
    SIGMA_CUTOFF_TAIL_ABS,
)

from gsasr import render
from gsasr.errors import BackendUnavailableError, InvalidInputError
from gsasr.render import reference

# Padding multiple of each architecture (GSASR_SPEC.md A.1): the golden Gaussians cover the padded LR image.

def _assert_sum_order_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected.to(actual.dtype), atol=RENDER_SUM_ORDER_ATOL,
                               rtol=RENDER_SUM_ORDER_RTOL)


# ----------------------------------------------------------------------------------------------------------------
# Oracles
# ----------------------------------------------------------------------------------------------------------------

def _activations(raw: torch.Tensor):
    """float32 (sigma_a from p0, sigma_b from p1, rho, premultiplied colour), as the official glue computes them."""
    g = raw.float()
    sigma_a = 0.99999 * torch.sigmoid(g[:, 0]) + 1e-6
    sigma_b = 0.99999 * torch.sigmoid(g[:, 1]) + 1e-6
    rho = 0.999999 * torch.tanh(g[:, 2])
    colour = torch.sigmoid(g[:, 4:7]) * torch.sigmoid(g[:, 3:4])
    return sigma_a, sigma_b, rho, colour


def _axis_float32(mean: torch.Tensor, sigma: torch.Tensor, n: int, scale: float):
    """Kernel-unit centre and std on an n-pixel axis (float32), plus the float32 pixel coordinates.

    A 1-pixel axis uses the documented extension: pixel units, the pixel at 0.
    """
    step = 1.2 / scale
    u = mean * 2 - 1
    if n == 1:
        return u * 0.5, sigma / step, torch.zeros(1)
    centre = (u + 1 - 1 / n) * n / (n - 1) - 1.0
    std = sigma / step * 2 / (n - 1)
    coords = torch.from_numpy((2.0 * np.arange(n, dtype=np.float64) / (n - 1) - 1.0).astype(np.float32))
    return centre, std, coords


def _window(raw: torch.Tensor, scale: float, canvas: tuple[int, int], dmax: float):
    """float32 dx [N, 1, W], dy [N, H, 1] and the official window mask [N, H, W]."""
    g = raw.float()
    sigma_a, sigma_b, _, _ = _activations(raw)
    cx, _, gx = _axis_float32(g[:, 7], sigma_b, canvas[1], scale)
    cy, _, gy = _axis_float32(g[:, 8], sigma_a, canvas[0], scale)
    dx = gx[None, None, :] - cx[:, None, None]
    dy = gy[None, :, None] - cy[:, None, None]
    limit = torch.tensor(dmax, dtype=torch.float32)
    inside = ~((dx > limit) | (dx < -limit)) & ~((dy > limit) | (dy < -limit))
    return dx, dy, inside


def _dense_kernel(raw: torch.Tensor, scale: float, canvas: tuple[int, int], dmax: float = 0.1) -> torch.Tensor:
    """[3, H, W]: the official kernel's float32 arithmetic on every (Gaussian, pixel) pair, summed in float64."""
    g = raw.float()
    sigma_a, sigma_b, rho, colour = _activations(raw)
    _, sig_w, _ = _axis_float32(g[:, 7], sigma_b, canvas[1], scale)
    _, sig_h, _ = _axis_float32(g[:, 8], sigma_a, canvas[0], scale)
    a = (1.0 / sig_w.double() / sig_w.double()).float()[:, None, None]
    b = (2 * rho / sig_w / sig_h)[:, None, None]
    c = (1.0 / sig_h.double() / sig_h.double()).float()[:, None, None]
    d = (-0.5 / (1 - rho * rho).double()).float()[:, None, None]
    dx, dy, inside = _window(raw, scale, canvas, dmax)
    q = a * dx * dx - b * dx * dy + c * dy * dy
    weight = torch.where(inside, torch.exp(q * d), torch.zeros(()))
    contrib = weight[:, None] * colour[:, :, None, None]  # float32 products, as the kernel adds them
    return contrib.double().sum(0)


def _dense_float64(raw: torch.Tensor, scale: float, canvas: tuple[int, int], dmax: float = 0.1) -> torch.Tensor:
    """[3, H, W] float64 from the spec's pixel-space formula, windowed by the official float32 test."""
    g = raw.double()
    sig_h = (0.99999 * torch.sigmoid(g[:, 0]) + 1e-6) * scale / 1.2  # p0 -> height
    sig_w = (0.99999 * torch.sigmoid(g[:, 1]) + 1e-6) * scale / 1.2  # p1 -> width
    rho = 0.999999 * torch.tanh(g[:, 2])
    colour = torch.sigmoid(g[:, 4:7]) * torch.sigmoid(g[:, 3:4])
    height, width = canvas
    dx = (torch.arange(width, dtype=torch.float64) + 0.5)[None, None, :] - (g[:, 7] * width)[:, None, None]
    dy = (torch.arange(height, dtype=torch.float64) + 0.5)[None, :, None] - (g[:, 8] * height)[:, None, None]
    sw, sh, r = sig_w[:, None, None], sig_h[:, None, None], rho[:, None, None]
    q = (dx / sw) ** 2 - 2 * r * dx * dy / (sw * sh) + (dy / sh) ** 2
    weight = torch.exp(-q / (2 * (1 - r * r)))
    weight = torch.where(_window(raw, scale, canvas, dmax)[2], weight, torch.zeros((), dtype=torch.float64))
    return (weight[:, None] * colour[:, :, None, None]).sum(0)


def _random_gaussians(n: int, seed: int, *, rho_scale: float = 1.0, sigma_shift: float = 0.0,
                      extremes: bool = False) -> torch.Tensor:
    """[n, 9] raw parameters; means over [-0.3, 1.3] so some centres fall outside the canvas.

    ``extremes`` adds rho near +-1 (|rho| = 0.999999 to float precision), tiny sigma (~1e-6) and sigma ~1.
    """
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(n, 9, generator=gen)
    raw[:, 2] *= rho_scale
    raw[:, 0:2] += sigma_shift
    raw[:, 7:9] = torch.rand(n, 2, generator=gen) * 1.6 - 0.3
    if extremes and n >= 8:
        raw[0, 2], raw[1, 2] = 9.0, -9.0  # rho = +-0.999999
        raw[2, 0:2] = -14.0  # sigma ~ 1e-6: a point
        raw[3, 0:2] = 12.0  # sigma ~ 1: the widest allowed
        raw[4, 0], raw[4, 1] = -14.0, 12.0  # a line
        raw[5, 2], raw[5, 0:2] = 9.0, torch.tensor([12.0, 12.0])  # wide and degenerate
        raw[6, 7:9] = torch.tensor([5.0, -4.0])  # far outside
        raw[7, 7:9] = torch.tensor([0.5, 0.5])  # dead centre
    return raw


# ----------------------------------------------------------------------------------------------------------------
# Golden parity: the official model's Gaussians render to the official output
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("arch", "case_name"), golden_render_params())
def test_golden_gaussians_render_to_the_official_output(arch: str, case_name: str):
    out, expected = render_golden_case(arch, case_name, "torch")
    torch.testing.assert_close(out, expected, atol=GOLDEN_RENDER_ABS, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Oracles on fresh random inputs
# ----------------------------------------------------------------------------------------------------------------

KERNEL_CASES = [  # canvas, scale, dmax, dtype
    ((17, 23), 3.7, 0.1, torch.float32),
    ((23, 17), 1.5, 0.5, torch.float32),
    ((40, 40), 4.0, 0.1, torch.float32),
    ((9, 64), 12.0, 0.05, torch.float32),
    ((31, 12), 2.0, 2.0, torch.float32),  # window wider than the canvas
    ((1, 19), 3.0, 0.1, torch.float32),
    ((19, 1), 3.0, 0.5, torch.float32),
    ((1, 1), 2.0, 0.1, torch.float32),
    ((2, 3), 1.2, 0.1, torch.float32),
    ((24, 30), 3.7, 0.1, torch.float16),
    ((24, 30), 3.7, 0.1, torch.bfloat16),
]


@pytest.mark.parametrize(("canvas", "scale", "dmax", "dtype"), KERNEL_CASES)
def test_reference_matches_a_dense_evaluation_of_the_kernel_arithmetic(canvas, scale, dmax, dtype):
    raw = _random_gaussians(48, seed=hash((canvas, scale, dmax)) % 2**31, extremes=True).to(dtype)
    expected = _dense_kernel(raw, scale, canvas, dmax)
    out = render.render_gaussians(raw, scale, canvas, dmax=dmax, backend="torch")
    assert out.dtype == torch.float32 and out.shape == (3, *canvas)
    assert bool(torch.isfinite(out).all())
    _assert_sum_order_close(out, expected)
    literal = reference.render_gaussians(raw, scale, canvas, dmax=dmax, sigma_cutoff=None)
    _assert_sum_order_close(literal, expected)


@pytest.mark.parametrize(("canvas", "scale", "dmax"), [((21, 34), 3.7, 0.1), ((48, 36), 4.0, 0.1),
                                                       ((13, 29), 1.5, 0.5), ((1, 25), 2.5, 0.1),
                                                       ((30, 1), 6.0, 0.5)])
def test_reference_matches_the_float64_pixel_space_formula(canvas, scale, dmax):
    raw = _random_gaussians(40, seed=7 + canvas[0], rho_scale=0.5)
    raw[:, 2].clamp_(-1.4, 1.4)  # |rho| <= 0.89: see RENDER_FLOAT64_ATOL
    expected = _dense_float64(raw, scale, canvas, dmax)
    out = render.render_gaussians(raw, scale, canvas, dmax=dmax, backend="torch")
    torch.testing.assert_close(out.double(), expected, atol=RENDER_FLOAT64_ATOL, rtol=RENDER_FLOAT64_RTOL)


def test_one_isotropic_gaussian_has_its_closed_form():
    # A Gaussian centred on pixel (5, 7) of a 16 x 20 canvas: peak = colour * alpha, and exp(-r^2 / (2 sigma^2)).
    scale, canvas = 3.0, (16, 20)
    raw = torch.zeros(1, 9)
    raw[0, 0:2] = 0.0  # sigma = 0.5: std 1.25 px at x3
    raw[0, 4:7] = torch.tensor([2.0, 0.0, -2.0])
    raw[0, 7], raw[0, 8] = 7.5 / 20, 5.5 / 16
    out = render.render_gaussians(raw, scale, canvas, dmax=2.0)
    colour = torch.sigmoid(raw[0, 4:7]) * 0.5
    std = (0.99999 * 0.5 + 1e-6) * scale / 1.2
    dy, dx = torch.meshgrid(torch.arange(16) - 5.0, torch.arange(20) - 7.0, indexing="ij")
    expected = torch.exp(-(dx**2 + dy**2) / (2 * std**2))[None] * colour[:, None, None]
    torch.testing.assert_close(out, expected, atol=RENDER_FLOAT64_ATOL, rtol=RENDER_FLOAT64_RTOL)
    _assert_sum_order_close(out[:, 5, 7], colour)  # the peak: weight 1 up to the centre's float32 rounding


def test_zero_opacity_and_far_away_gaussians_render_black():
    raw = _random_gaussians(30, seed=3)
    raw[:10, 3] = -1e4  # alpha = sigmoid(-1e4) = 0
    raw[10:, 7] = 3.0  # centres two canvas widths to the right
    out = render.render_gaussians(raw, 2.0, (12, 18))
    assert torch.equal(out, torch.zeros(3, 12, 18))


def test_the_window_truncates_at_dmax_of_the_whole_canvas():
    # One wide Gaussian in the middle of a 48-wide canvas: the window half-width is 0.1 * 47 / 2 = 2.35 px.
    raw = torch.zeros(1, 9)
    raw[0, 0:2] = 12.0  # sigma ~ 1: std 2.5 px at x3
    raw[0, 7:9] = 24.5 / 48
    out = render.render_gaussians(raw, 3.0, (48, 48))
    lit = (out[0] > 0).nonzero()
    assert lit[:, 0].min() == 22 and lit[:, 0].max() == 26  # |24 - i| <= 2.35
    assert lit[:, 1].min() == 22 and lit[:, 1].max() == 26


# ----------------------------------------------------------------------------------------------------------------
# The k-sigma cut, regions, chunking, 1-pixel canvases
# ----------------------------------------------------------------------------------------------------------------

def test_the_sigma_cut_drops_only_weights_below_exp_minus_32():
    # One Gaussian per render, so both renders add the same terms in the same order: the difference is exactly
    # the dropped tail.
    raw = _random_gaussians(24, seed=11, sigma_shift=2.0, extremes=True)
    raw[:, 7:9] = torch.rand(24, 2, generator=torch.Generator().manual_seed(5)) * 0.6 + 0.2
    raw[:, 3:7] = 20.0  # colour and alpha 1
    worst = 0.0
    for i in range(raw.shape[0]):
        cut = reference.render_gaussians(raw[i:i + 1], 8.0, (120, 120), dmax=0.5)
        literal = reference.render_gaussians(raw[i:i + 1], 8.0, (120, 120), dmax=0.5, sigma_cutoff=None)
        worst = max(worst, float((cut - literal).abs().max()))
    assert worst <= SIGMA_CUTOFF_TAIL_ABS
    assert math.exp(-reference.SIGMA_CUTOFF**2 / 2) < SIGMA_CUTOFF_TAIL_ABS


def test_the_sigma_cut_agrees_with_the_literal_window_on_many_gaussians():
    raw = _random_gaussians(400, seed=12, sigma_shift=1.0, extremes=True)
    cut = reference.render_gaussians(raw, 6.0, (90, 110), dmax=0.5)
    literal = reference.render_gaussians(raw, 6.0, (90, 110), dmax=0.5, sigma_cutoff=None)
    _assert_sum_order_close(cut, literal)


@pytest.mark.parametrize("region", [(0, 0, 37, 45), (5, 9, 20, 11), (36, 44, 1, 1), (0, 30, 37, 15), (12, 0, 1, 45)])
def test_a_region_equals_the_same_crop_of_the_full_render(region):
    raw = _random_gaussians(300, seed=21, extremes=True)
    full = render.render_gaussians(raw, 3.7, (37, 45), dmax=0.2)
    y0, x0, h, w = region
    part = render.render_gaussians(raw, 3.7, (37, 45), dmax=0.2, region=region)
    assert part.shape == (3, h, w)
    _assert_sum_order_close(part, full[:, y0:y0 + h, x0:x0 + w])


def test_tiles_assemble_into_the_full_image():
    raw = _random_gaussians(200, seed=22)
    full = render.render_gaussians(raw, 4.0, (30, 40))
    tiled = torch.cat([torch.cat([render.render_gaussians(raw, 4.0, (30, 40), region=(y, x, 10, 20))
                                  for x in (0, 20)], dim=2) for y in (0, 10, 20)], dim=1)
    _assert_sum_order_close(tiled, full)


def test_chunking_does_not_change_the_result():
    raw = _random_gaussians(500, seed=23, sigma_shift=1.0)
    whole = reference.render_gaussians(raw, 4.0, (64, 48), chunk_bytes=1 << 30)
    tiny_chunks = reference.render_gaussians(raw, 4.0, (64, 48), chunk_bytes=2000)
    _assert_sum_order_close(tiny_chunks, whole)


@pytest.mark.parametrize("canvas", [(1, 1), (1, 7), (7, 1)])
def test_one_pixel_canvases_are_finite_and_follow_the_pixel_unit_extension(canvas):
    raw = _random_gaussians(64, seed=31)
    raw[:, 7:9] = 0.5 + 0.08 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    out = render.render_gaussians(raw, 1.0, canvas, dmax=0.1)
    assert bool(torch.isfinite(out).all())
    assert float(out.abs().sum()) > 0  # centres within 0.1 px of the single pixel's centre do reach it
    _assert_sum_order_close(out, _dense_kernel(raw, 1.0, canvas, 0.1))


def test_empty_inputs_render_black():
    assert torch.equal(render.render_gaussians(torch.zeros(0, 9), 2.0, (5, 6)), torch.zeros(3, 5, 6))


def test_anisotropic_scales_use_one_step_per_axis():
    raw = _random_gaussians(40, seed=41, rho_scale=0.5)
    raw[:, 2].clamp_(-1.4, 1.4)
    out = render.render_gaussians(raw, (2.0, 3.0), (20, 30))
    # Equivalent isotropic render: scale 3 everywhere, with the height std shrunk by 2/3 through its raw logit.
    sigma_a = 0.99999 * torch.sigmoid(raw[:, 0].double()) + 1e-6
    target = (sigma_a * 2.0 / 3.0 - 1e-6) / 0.99999
    iso = raw.clone()
    iso[:, 0] = torch.logit(target).float()
    torch.testing.assert_close(out, render.render_gaussians(iso, 3.0, (20, 30)), atol=RENDER_FLOAT64_ATOL,
                               rtol=RENDER_FLOAT64_RTOL)


def test_gaussian_terms_round_like_the_kernel():
    raw = _random_gaussians(64, seed=51, extremes=True)
    terms = render.gaussian_terms(raw, 3.7, (40, 50))
    sig_w, sig_h = terms.sigma.double().unbind(1)
    rho = (0.999999 * torch.tanh(raw[:, 2].float()))
    np.testing.assert_array_equal(terms.conic[:, 0].numpy(), (1.0 / sig_w / sig_w).float().numpy())
    np.testing.assert_array_equal(terms.conic[:, 2].numpy(), (1.0 / sig_h / sig_h).float().numpy())
    np.testing.assert_array_equal(terms.conic[:, 3].numpy(), (-0.5 / (1 - rho * rho).double()).float().numpy())
    assert terms.centre.dtype == terms.colour.dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------------
# Backends and input checks
# ----------------------------------------------------------------------------------------------------------------

NOT_BUILT = "the native rasteriser is not built; run `python install.py` (simulated by the test)"


@pytest.fixture
def without_native(monkeypatch):
    """This process as it is where nothing was compiled (CI builds the extension, so simulate its absence)."""
    monkeypatch.delenv(render.ENV_VAR, raising=False)
    monkeypatch.setattr(render, "_compiled_cache", (None, NOT_BUILT))
    monkeypatch.setattr(render, "_fallback_logged", False)


@pytest.mark.parametrize("name", ["cpu", "cuda"])
def test_an_unavailable_backend_raises_with_its_reason(name, without_native):
    assert render.available_backends()[name] == NOT_BUILT
    with pytest.raises(BackendUnavailableError, match=re.escape(NOT_BUILT)):
        render.render_gaussians(torch.zeros(4, 9), 2.0, (4, 4), backend=name)


def test_the_torch_backend_is_always_available_and_auto_falls_back_to_it(without_native):
    backends = render.available_backends()
    assert backends["torch"] is None and set(backends) == set(render.BACKENDS)
    assert render.active_backend("cpu") == "torch"
    raw = _random_gaussians(20, seed=61)
    torch.testing.assert_close(render.render_gaussians(raw, 2.0, (10, 12)),
                               render.render_gaussians(raw, 2.0, (10, 12), backend="torch"), atol=0, rtol=0)


def test_the_environment_variable_forces_a_backend(monkeypatch):
    monkeypatch.setenv(render.ENV_VAR, "torch")
    assert render.active_backend("cpu") == "torch"
    assert render.render_gaussians(torch.zeros(3, 9), 2.0, (4, 4)).shape == (3, 4, 4)
    monkeypatch.setenv(render.ENV_VAR, " CUDA ")
    assert render.active_backend("cpu") == "cuda"
    with pytest.raises(BackendUnavailableError):  # not built here, or built but these Gaussians are on the CPU
        render.render_gaussians(torch.zeros(3, 9), 2.0, (4, 4))
    # An explicit argument wins over the variable.
    assert render.render_gaussians(torch.zeros(3, 9), 2.0, (4, 4), backend="torch").shape == (3, 4, 4)
    monkeypatch.setenv(render.ENV_VAR, "fastest")
    with pytest.raises(InvalidInputError, match="GSASR_RASTERIZER"):
        render.render_gaussians(torch.zeros(3, 9), 2.0, (4, 4))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"gaussians": torch.zeros(5, 8)}, "shape"),
    ({"gaussians": torch.zeros(1, 5, 9)}, "shape"),
    ({"gaussians": torch.zeros(5, 9, dtype=torch.int32)}, "floating point"),
    ({"gaussians": torch.full((5, 9), float("nan"))}, "NaN"),
    ({"gaussians": [[0.0] * 9]}, "torch.Tensor"),
    ({"scale": 0.0}, "scale"),
    ({"scale": -2.0}, "scale"),
    ({"scale": float("inf")}, "scale"),
    ({"scale": "x4"}, "scale"),
    ({"canvas_hw": (0, 8)}, "canvas"),
    ({"canvas_hw": (8,)}, "canvas"),
    ({"dmax": -0.1}, "dmax"),
    ({"dmax": float("nan")}, "dmax"),
    ({"region": (0, 0, 9, 8)}, "region"),
    ({"region": (-1, 0, 2, 2)}, "region"),
    ({"region": (2, 2, 0, 3)}, "region"),
    ({"region": (0, 0, 2)}, "region"),
    ({"backend": "metal"}, "backend"),
])
def test_bad_inputs_raise_invalid_input_errors(kwargs, message):
    args = {"gaussians": torch.zeros(5, 9), "scale": 2.0, "canvas_hw": (8, 8)} | kwargs
    with pytest.raises(InvalidInputError, match=message):
        render.render_gaussians(**args)
