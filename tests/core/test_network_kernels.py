"""The compiled module's fused CPU kernels for the networks' bf16 glue (cuda/network_cpu.cpp), against the PyTorch
operations they replace (archs/low_precision.add_, add_norm, rope_), on fresh random inputs.

Both code paths of each kernel are run: the AVX-512 one (where this CPU has AVX512-BF16; the CPUs amp="auto" runs
bf16 on) and the generic loops every other CPU gets, forced with ``generic=True``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tolerances import FUSED_NORM_BF16_FLIP_FRACTION

from gsasr import render
from gsasr.archs.blocks import apply_rope, rope_phases, rope_rotation


@pytest.fixture(scope="module")
def ext():
    module, reason = render._compiled()
    if module is None or not hasattr(module, "residual_layer_norm"):
        pytest.skip(f"the compiled module is not built here: {reason or 'built before the network kernels'}")
    return module


@pytest.fixture(params=["vectorised", "generic"])
def generic(request, ext):
    if request.param == "vectorised" and not ext.network_kernels_vectorized():
        pytest.skip("this CPU has no AVX512-BF16: only the generic loops run here")
    return request.param == "generic"


def bf16_ulp(value: torch.Tensor) -> torch.Tensor:
    """The spacing of bf16 numbers at |value| (8 significant bits)."""
    exponent = torch.frexp(value.float().abs().clamp_min(2.0 ** -126)).exponent
    return torch.ldexp(torch.ones_like(value, dtype=torch.float32), exponent - 8)


def assert_rounded_alike(fused: torch.Tensor, expected_f32: torch.Tensor, exact: torch.Tensor,
                         magnitude: torch.Tensor) -> None:
    """``fused`` (bf16) is PyTorch's bf16 rounding of ``expected_f32`` except for rare ties broken the other way by a
    last-bit difference before rounding: every value within one bf16 step of the exact (float64) result, plus the
    float32 arithmetic's own error, a few float32 steps of the ``magnitude`` of the terms summed (which matters only
    where they cancel to almost nothing)."""
    assert fused.dtype == torch.bfloat16
    flipped = fused != expected_f32.bfloat16()
    assert flipped.float().mean().item() <= FUSED_NORM_BF16_FLIP_FRACTION
    assert ((fused.double() - exact).abs() <= bf16_ulp(exact) + 2.0 ** -20 * magnitude).all()


TERMS = ["none", "rows bf16", "rows float32", "vector bf16", "vector float32"]


def make_term(kind: str, shape: tuple[int, ...]) -> torch.Tensor | None:
    if kind == "none":
        return None
    rows, dtype = kind.split()
    values = torch.randn(shape if rows == "rows" else shape[-1:]) * 2
    return values.to({"bf16": torch.bfloat16, "float32": torch.float32}[dtype])


@pytest.mark.parametrize("channels", [192, 180, 24])
@pytest.mark.parametrize("term_kind", TERMS)
def test_residual_layer_norm_is_the_add_then_pytorch_layer_norm(ext, generic, channels, term_kind):
    torch.manual_seed(channels + TERMS.index(term_kind))
    shape = (7, 144, channels)
    x = torch.randn(shape) * 3 + 0.5
    term = make_term(term_kind, shape)
    weight, bias = torch.randn(channels), torch.randn(channels)
    expected_x = x.clone() if term is None else x + term.float()
    out = ext.residual_layer_norm(x, term, weight, bias, 1e-5, True, generic=generic)
    assert torch.equal(x, expected_x)  # the stream's sums: bitwise PyTorch's
    expected = F.layer_norm(expected_x, (channels,), weight, bias, 1e-5)
    exact = F.layer_norm(expected_x.double(), (channels,), weight.double(), bias.double(), 1e-5)
    normed = F.layer_norm(expected_x.double(), (channels,), None, None, 1e-5)
    assert out.shape == shape
    assert_rounded_alike(out, expected, exact, (normed * weight.double()).abs() + bias.double().abs())


@pytest.mark.parametrize("term_kind", TERMS[1:])
def test_residual_add_alone_is_bitwise_pytorch_s(ext, generic, term_kind):
    torch.manual_seed(3)
    x = torch.randn(5, 144, 192)
    term = make_term(term_kind, tuple(x.shape))
    expected = x + term.float()
    assert ext.residual_layer_norm(x, term, None, None, 0.0, False, generic=generic) is None
    assert torch.equal(x, expected)


def test_residual_layer_norm_refuses_what_it_cannot_read(ext):
    x = torch.randn(4, 192)
    with pytest.raises(RuntimeError, match="float32"):
        ext.residual_layer_norm(x.double(), None, None, None, 0.0, False)
    with pytest.raises(RuntimeError, match="contiguous"):
        ext.residual_layer_norm(x.t(), None, None, None, 0.0, False)
    with pytest.raises(RuntimeError, match="shape"):
        ext.residual_layer_norm(x, torch.randn(3, 192), None, None, 0.0, False)
    with pytest.raises(RuntimeError, match="weight and bias"):
        ext.residual_layer_norm(x, None, None, None, 1e-5, True)


def rope_case(heads: int, head_dim: int, tokens: int, seed: int):
    torch.manual_seed(seed)
    freqs = torch.randn(2, heads, head_dim // 2)
    t = torch.arange(tokens, dtype=torch.float32)
    side = int(tokens ** 0.5)
    return rope_phases(freqs, t % side, torch.div(t, side, rounding_mode="floor"))


@pytest.mark.parametrize("heads, head_dim", [(6, 32), (2, 12)])
def test_rope_in_place_is_apply_rope(ext, generic, heads, head_dim):
    """q | k | v side by side (one stacked product): q and k rotated as apply_rope does, v untouched."""
    tokens, width = 144, heads * head_dim
    phases = rope_case(heads, head_dim, tokens, seed=head_dim)
    qkv = (torch.randn(9, tokens, 3 * width) * 4).bfloat16()
    before = qkv.clone()
    ext.rope_(qkv, 2 * width, width, rope_rotation(phases), generic=generic)
    for part in range(2):
        split = before[..., part * width:(part + 1) * width].unflatten(-1, (heads, head_dim)).transpose(1, 2)
        expected = apply_rope(split, phases)  # float32 product, rounded to bf16
        got = qkv[..., part * width:(part + 1) * width].unflatten(-1, (heads, head_dim)).transpose(1, 2)
        exact = apply_rope(split.double(), phases.to(torch.complex128))
        xc = torch.view_as_complex(split.float().reshape(*split.shape[:-1], -1, 2))
        expected_f32 = torch.view_as_real(xc * phases).flatten(3)
        assert expected.dtype == torch.bfloat16 and torch.equal(expected, expected_f32.bfloat16())
        pairs = split.double().unflatten(-1, (-1, 2)).abs().sum(-1, keepdim=True)  # |a| + |b| per pair
        assert_rounded_alike(got, expected_f32, exact, pairs.expand(*pairs.shape[:-1], 2).flatten(-2))
    assert torch.equal(qkv[..., 2 * width:], before[..., 2 * width:])


def test_rope_refuses_a_table_that_does_not_fit(ext):
    phases = rope_case(6, 32, 144, seed=0)
    with pytest.raises(RuntimeError, match="positions"):
        ext.rope_(torch.zeros(2, 100, 576, dtype=torch.bfloat16), 384, 192, rope_rotation(phases))
    with pytest.raises(RuntimeError, match="bf16"):
        ext.rope_(torch.zeros(2, 144, 576), 384, 192, rope_rotation(phases))
    with pytest.raises(RuntimeError, match="does not fit"):
        ext.rope_(torch.zeros(2, 144, 576, dtype=torch.bfloat16), 100, 192, rope_rotation(phases))
