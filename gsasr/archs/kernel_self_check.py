"""The self-check of the networks' compiled CPU kernels (cuda/network_cpu.cpp, cuda/attention_cpu.cpp).

Those kernels run on whatever CPU the user has: AVX-512 code paths and oneDNN's bf16 micro-kernels that we test on
one kind of CPU only. A kernel that is wrong elsewhere (a miscompiled build, a brgemm that behaves differently on
another CPU) would give a wrong picture with no error, so, like the rasteriser backends (gsasr/render/self_check.py),
they are checked once per process before their first use: each on a small fixed case against the PyTorch
operations it replaces. The glue kernels (residual + LayerNorm, RoPE) and the window attention are checked apart:
a failing attention leaves the glue in use, a failing glue turns both off. A failure is logged once, as an error
naming the kernel, and the networks run on PyTorch's operations instead. ``python -m gsasr info`` shows the outcome.
"""
from __future__ import annotations

import logging
from types import ModuleType
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .blocks import apply_rope, rope_phases, rope_rotation

logger = logging.getLogger(__name__)

KERNEL_CHECK_REL: float = 2.0 ** -5
"""Largest difference from PyTorch's result, relative to that result's largest magnitude, a kernel may show on its
fixed case. The kernels only round a few values one bf16 step (2^-8 relative) the other way; a broken one (a wrong
mean, angle, scale, head or token, garbage) is off by O(1)."""


class KernelCheck(NamedTuple):
    """Why the glue kernels and the window attention failed their checks (None: passed or not applicable)."""

    glue: str | None
    attention: str | None

    def describe(self) -> str:
        failures = [f"{name} {why}" for name, why in (("glue", self.glue), ("attention", self.attention)) if why]
        return "self-check passed" if not failures else "self-check failed: " + "; ".join(failures)


def _relative_error(result: torch.Tensor, expected: torch.Tensor) -> float:
    return ((result.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-30)).item()


def _verdict(error: float) -> str | None:
    return None if error <= KERNEL_CHECK_REL else f"differs from PyTorch by {error:.2g} (relative)"


def _check_glue(kernels: ModuleType, generator: torch.Generator) -> str | None:
    channels, heads, head_dim, tokens = 192, 6, 32, 16
    x = torch.randn(tokens, channels, generator=generator) * 3
    term = torch.randn(tokens, channels, generator=generator).bfloat16()
    weight, bias = torch.randn(channels, generator=generator), torch.randn(channels, generator=generator)
    expected_x = x + term.float()
    expected = F.layer_norm(expected_x, (channels,), weight, bias, 1e-5).bfloat16()
    normed = kernels.residual_layer_norm(x, term, weight, bias, 1e-5, True)
    if not torch.equal(x, expected_x):
        return "residual add differs from PyTorch's"
    if (why := _verdict(_relative_error(normed, expected))) is not None:
        return f"residual_layer_norm {why}"

    freqs = torch.randn(2, heads, head_dim // 2, generator=generator)
    t = torch.arange(tokens, dtype=torch.float32)
    phases = rope_phases(freqs, t % 4, torch.div(t, 4, rounding_mode="floor"))
    qkv = torch.randn(3, tokens, 3 * channels, generator=generator).bfloat16()
    split = qkv[..., :channels].unflatten(-1, (heads, head_dim)).transpose(1, 2)
    expected = apply_rope(split, phases).transpose(1, 2).flatten(2)
    kernels.rope_(qkv, 2 * channels, channels, rope_rotation(phases))
    return None if (why := _verdict(_relative_error(qkv[..., :channels], expected))) is None else f"rope_ {why}"


def _check_attention(kernels: ModuleType, generator: torch.Generator) -> str | None:
    heads, head_dim, queries, keys = 6, 32, 144, 160
    q = torch.randn(2, queries, heads * head_dim, generator=generator).bfloat16()
    k, v = (torch.randn(2, keys, heads * head_dim, generator=generator).bfloat16() for _ in range(2))
    bias = torch.randn(heads, queries, keys, generator=generator)
    split = [t.unflatten(-1, (heads, head_dim)).transpose(1, 2).float() for t in (q, k, v)]
    for attn_bias in (None, bias):
        out = kernels.window_attention(q, k, v, heads, head_dim ** -0.5, attn_bias)
        expected = F.scaled_dot_product_attention(*split, attn_mask=attn_bias).transpose(1, 2).flatten(2)
        if (why := _verdict(_relative_error(out, expected))) is not None:
            return f"window_attention {why}"
    return None


def run(kernels: ModuleType) -> KernelCheck:
    """Check the kernels of ``kernels`` (the compiled module) on their fixed cases; exceptions count as failures."""
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        try:
            glue = _check_glue(kernels, generator)
        except Exception as exc:  # any failure of a native call: the kernel is not usable here
            glue = f"raised {type(exc).__name__}: {exc}"
        attention = None
        if glue is None and kernels.attention_available():
            try:
                attention = _check_attention(kernels, generator)
            except Exception as exc:
                attention = f"raised {type(exc).__name__}: {exc}"
    return KernelCheck(glue, attention)


class _WithoutAttention:
    """The compiled module as the networks see it when only its window attention failed the check."""

    def __init__(self, module: ModuleType):
        self._module = module

    def attention_available(self) -> bool:
        return False

    def __getattr__(self, name: str):
        return getattr(self._module, name)


# id(module) -> (module, its check), once per process; the module is kept so that its id cannot be reused
_checks: dict[int, tuple[object, KernelCheck]] = {}


def check(kernels: ModuleType) -> KernelCheck:
    """The check of ``kernels``, run on first request; a failure is logged once."""
    key = id(kernels)
    if key not in _checks:
        _checks[key] = (kernels, result := run(kernels))
        if result.glue or result.attention:
            logger.error("GSASR: the compiled CPU network kernels failed their %s; the networks use PyTorch's "
                         "operations for %s instead (rebuild with `python install.py`, and please report this CPU)",
                         result.describe().removeprefix("self-check "),
                         "everything" if result.glue else "attention")
    return _checks[key][1]


def usable(kernels: ModuleType | None):
    """``kernels`` as far as they passed their check: the module, the module without its window attention, or
    None (also when ``kernels`` is None)."""
    if kernels is None:
        return None
    result = check(kernels)
    if result.glue:
        return None
    return _WithoutAttention(kernels) if result.attention else kernels
