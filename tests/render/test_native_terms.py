"""The fused CPU terms pass (cuda/terms_cpu.cpp) gives exactly reference.gaussian_terms' floats, bit for bit.

Bitwise, not within a tolerance: the native renderer's k-sigma ellipse bound is proved for the terms the reference
computes, and D = -0.5 / (1 - rho^2) amplifies any change when |rho| -> 1.
"""
from __future__ import annotations

import os

import pytest
import torch

from gsasr import render
from gsasr.render import _native
from gsasr.render.reference import gaussian_terms


@pytest.fixture(scope="module")
def ext():
    reason = render.available_backends()["cpu"]
    if reason is not None:
        pytest.skip(f"the cpu backend is unavailable: {reason}")
    module = _native.load()
    if not hasattr(module, "terms") and os.environ.get("CI", "").lower() != "true":
        pytest.skip("this build predates the fused terms pass; run `python install.py`")
    return module


def _raw(n: int, seed: int, spread: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(n, 9, generator=gen) * spread
    raw[:, 7:9] = torch.rand(n, 2, generator=gen) * 1.6 - 0.3
    extremes = torch.tensor([-120.0, -88.0, -30.0, -14.0, -1e-3, 0.0, 1e-7, 3.0, 14.0, 30.0, 88.0, 120.0])
    for column in range(7):  # activations at and past float32's saturation, on every parameter
        raw[column * len(extremes):(column + 1) * len(extremes), column] = extremes
    return raw


def _assert_bitwise(ext, raw: torch.Tensor, scale, canvas) -> None:
    expected = gaussian_terms(raw, scale, canvas)
    got = _native.cpu_terms(ext, raw, scale, canvas)
    for name, want, have in zip(expected._fields, expected, got, strict=True):
        assert have.dtype == torch.float32 and have.shape == want.shape, name
        mismatch = (have.view(torch.int32) != want.view(torch.int32)).nonzero()
        assert mismatch.numel() == 0, f"{name}: {mismatch.shape[0]} values differ, first at {mismatch[0].tolist()}"


@pytest.mark.parametrize(("scale", "canvas"), [(4.0, (96, 128)), (3.7, (85, 118)), (2.0, (1, 19)), (1.5, (17, 1)),
                                               ((2.5, 3.1), (60, 74)), (30.0, (1500, 900)), (1.01, (3, 2))])
@pytest.mark.parametrize("spread", [1.0, 6.0])
def test_the_fused_terms_equal_the_reference_bit_for_bit(ext, scale, canvas, spread):
    _assert_bitwise(ext, _raw(20000, seed=len(canvas) * 7 + int(spread), spread=spread), scale, canvas)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_upcast_like_the_reference(ext, dtype):
    _assert_bitwise(ext, _raw(5000, seed=3, spread=2.0).to(dtype), 3.0, (64, 80))


def test_a_strided_input_gives_the_same_bits(ext):
    raw = _raw(4000, seed=5, spread=2.0)
    wide = torch.zeros(4000, 12)
    wide[:, 1:10] = raw
    _assert_bitwise(ext, wide[:, 1:10], 2.7, (70, 50))  # non-contiguous rows
    # Column-major: PyTorch's reference sigmoids take their vectorised path here, which ext.terms does not
    # repeat, so cpu_terms must route this layout to PyTorch (without that guard this line fails).
    _assert_bitwise(ext, raw.t().contiguous().t(), 2.7, (70, 50))


def test_the_terms_pass_checks_its_inputs(ext):
    with pytest.raises(RuntimeError, match="contiguous float32 CPU tensor"):
        ext.terms(torch.zeros(4, 8), torch.zeros(4), 0.3, 0.3, 10, 10)
    with pytest.raises(RuntimeError, match="rho"):
        ext.terms(torch.zeros(4, 9), torch.zeros(3), 0.3, 0.3, 10, 10)
