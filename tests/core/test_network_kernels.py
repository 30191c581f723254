"""The compiled module's CPU kernels for the networks' bf16 path (cuda/network_cpu.cpp, cuda/attention_cpu.cpp)
against the PyTorch operations they replace (archs/low_precision.add_, add_norm, rope_, window_attention), on fresh
random inputs.

Both code paths of each kernel are run: the AVX-512 one (where this CPU has AVX512-BF16; the CPUs amp="auto" runs
bf16 on) and the generic loops every other CPU gets, forced with ``generic=True``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tolerances import FUSED_NORM_BF16_FLIP_FRACTION, WINDOW_ATTENTION_ERROR_GROWTH

from gsasr.archs.blocks import apply_rope, rope_phases, rope_rotation


@pytest.fixture
def ext(network_kernels):
    return network_kernels


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


@pytest.mark.parametrize("channels", [192, 180, 24, 8])
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


@pytest.fixture
def attention(ext):
    if not ext.attention_available():
        pytest.skip("window_attention needs AVX-512 with bf16 and PyTorch's bf16 brgemm on this CPU")
    return ext.window_attention


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


@pytest.mark.parametrize("head_dim", [32, 30, 12])
@pytest.mark.parametrize("windows, queries, tokens, heads, stacked", [
    (28, 144, 144, 6, True), (5, 144, 144, 6, False), (3, 143, 143, 2, True), (4, 256, 256, 6, True),
    (2, 7, 7, 1, False), (3, 256, 576, 6, False), (2, 16, 37, 2, False)])
def test_window_attention_is_sdpa(attention, windows, queries, tokens, heads, stacked, head_dim):
    """Against PyTorch's SDPA on the same bf16 inputs, both measured from the float64 result: as close as SDPA
    (the same float32 scores and softmax, the same bf16 rounding of the weights), in the projection's layout.
    q, k, v as views of one stacked product (self-attention) or as separate tensors (cross-attention, also with
    more keys than queries: HAT's overlapping windows). Heads of 32 channels (the enhanced decoder, HAT-L), 30 (the
    paper decoder) and 12."""
    torch.manual_seed(windows * tokens + queries + head_dim)
    width = heads * head_dim
    if stacked:
        q, k, v = (torch.randn(windows, tokens, 3 * width) * 1.5).bfloat16().chunk(3, dim=-1)
    else:
        q = (torch.randn(windows, queries, width) * 1.5).bfloat16()
        k, v = ((torch.randn(windows, tokens, width) * 1.5).bfloat16() for _ in range(2))
    out = attention(q, k, v, heads, head_dim ** -0.5)
    assert out.shape == (windows, queries, width) and out.dtype == torch.bfloat16 and out.is_contiguous()
    sdpa = F.scaled_dot_product_attention(*(split_heads(t, heads) for t in (q, k, v))).transpose(1, 2).flatten(2)
    exact = F.scaled_dot_product_attention(*(split_heads(t.double(), heads) for t in (q, k, v)))
    exact = exact.transpose(1, 2).flatten(2)
    ours_error, sdpa_error = (out.double() - exact).abs(), (sdpa.double() - exact).abs()
    assert ours_error.max() <= WINDOW_ATTENTION_ERROR_GROWTH * sdpa_error.max()
    assert ours_error.mean() <= WINDOW_ATTENTION_ERROR_GROWTH * sdpa_error.mean()


@pytest.mark.parametrize("queries, tokens", [(144, 144), (16, 37)])
def test_window_attention_adds_the_bias_in_float32(attention, queries, tokens):
    """The paper decoder's relative-position bias (heads, Tq, Tk), the same for every window, added to the scaled
    scores: against SDPA with that float32 mask on the same bf16 q, k, v, and against float64."""
    torch.manual_seed(queries + tokens)
    heads, width = 6, 192
    q = (torch.randn(4, queries, width) * 1.5).bfloat16()
    k, v = ((torch.randn(4, tokens, width) * 1.5).bfloat16() for _ in range(2))
    bias = torch.randn(heads, queries, tokens) * 2
    out = attention(q, k, v, heads, 32 ** -0.5, bias)
    q4, k4, v4 = (split_heads(t, heads) for t in (q, k, v))
    sdpa = F.scaled_dot_product_attention(q4.float(), k4.float(), v4.float(), attn_mask=bias)
    exact = F.scaled_dot_product_attention(q4.double(), k4.double(), v4.double(), attn_mask=bias.double())
    sdpa, exact = (t.transpose(1, 2).flatten(2) for t in (sdpa, exact))
    # float32 SDPA has no bf16 rounding of the weights: ours is within that rounding (2^-8 relative per weight)
    assert ((out.double() - exact).abs() <= 2.0 ** -8 * exact.abs().amax() + bf16_ulp(exact)).all()
    without_bias = attention(q, k, v, heads, 32 ** -0.5)
    assert (out.double() - exact).abs().mean() < (without_bias.double() - exact).abs().mean() / 10
    assert (sdpa.double() - exact).abs().max() < 1e-5


def test_window_attention_refuses_what_it_cannot_read(ext, attention):
    q = torch.zeros(2, 144, 192, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="even head dimension"):
        attention(q, q, q, 64, 0.25)  # head_dim 3
    with pytest.raises(RuntimeError, match="one shape"):
        attention(q, q[:, :100], q, 6, 0.25)
    with pytest.raises(RuntimeError, match="one shape"):
        attention(q, q[:1], q[:1], 6, 0.25)
    with pytest.raises(RuntimeError, match="bf16"):
        attention(q.float(), q.float(), q.float(), 6, 0.25)
    with pytest.raises(RuntimeError, match="bias"):
        attention(q, q, q, 6, 0.25, torch.zeros(6, 144, 100))
