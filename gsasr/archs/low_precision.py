"""The networks' reduced-precision path (bf16 or fp16 under autocast), made fast on CPUs with bf16 matrix units.

* Weights cast once (:func:`cast_weights`). Under ``torch.autocast`` every ``nn.Linear`` and ``nn.Conv2d`` call
  casts its float32 weight and bias to the autocast dtype again (autocast only caches casts of weights that require
  grad, and inference runs without). On a CPU with bf16 matrix units a 192 x 192 product runs in a fraction of a
  millisecond, so those casts, and convolution weights in the layout oneDNN does not want, cost about as much as the
  products themselves. :func:`cast_weights` swaps, for the duration of a block, every Linear's and Conv2d's weight
  and bias for a copy in the low-precision dtype (convolution weights channels-last, the layout oneDNN's bf16
  kernels run fastest on). The copies are made once per model and dtype and kept until a parameter changes (a new
  tensor or an in-place update); parameters made under ``torch.inference_mode()`` have no version counter, so for
  them the copies are made once per block and not kept. The model enters the block once per image, around all its
  tiles. Autocast still runs around it and casts the activations exactly as before, so the numbers are autocast's
  own: the same rounding of the same weights, only not repeated.
* Fused products (:func:`linear`, :func:`linear_relu`, :func:`linear_gelu`) and a bf16 ReLU (:func:`relu_`).
* Float32 residual streams where the official (CUDA) AMP keeps them (:func:`float_stream`, :func:`float_norm`).
* The compiled CPU kernels for the work between the products (:func:`fused_glue` and below).
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

_CACHE_ATTRIBUTE = "_gsasr_low_precision_weights"
_CAST_MODULES = (nn.Linear, nn.Conv2d)


def _cast(name: str, value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    cast = value.detach().to(dtype)
    if name == "weight" and cast.dim() == 4:
        cast = cast.contiguous(memory_format=torch.channels_last)
    return cast


def _slots(model: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor]]:
    return [(module, name, value) for module in model.modules() if isinstance(module, _CAST_MODULES)
            for name, value in module._parameters.items() if value is not None and value.is_floating_point()]


@contextlib.contextmanager
def cast_weights(model: nn.Module, dtype: torch.dtype):
    """Inside the block, every Linear and Conv2d of ``model`` computes with its weight and bias in ``dtype``
    (cached copies, see the module docstring). Restores the float parameters on exit, also on errors.

    Not reentrant and not for concurrent use of one model from several threads (the parameters are swapped on the
    module itself); the pipeline runs one forward at a time.
    """
    slots = _slots(model)
    if any(value.is_inference() for _, _, value in slots):
        # Made under torch.inference_mode() (ComfyUI runs its nodes there, loader included): such tensors keep no
        # version counter, so an in-place update could not be noticed. Cast for this block only, keep nothing (the
        # model enters the block once per image, so this costs ~14 ms for EDSR, ~65 ms for HAT-L on 2 cores).
        cache = (None, [_cast(name, value, dtype) for _, name, value in slots])
    else:
        key = (dtype, tuple((id(value), value.data_ptr(), value._version) for _, _, value in slots))
        cache = getattr(model, _CACHE_ATTRIBUTE, None)
        if cache is None or cache[0] != key:
            cache = (key, [_cast(name, value, dtype) for _, name, value in slots])
            object.__setattr__(model, _CACHE_ATTRIBUTE, cache)  # a plain attribute, not a submodule or buffer
    try:
        for (module, name, _), cast in zip(slots, cache[1], strict=True):
            module._parameters[name] = cast
        yield
    finally:
        for module, name, value in slots:
            module._parameters[name] = value


def relu_(x: torch.Tensor) -> torch.Tensor:
    """ReLU in place, returning ``x``. bf16 goes through its int16 bit pattern: a bf16 number is negative exactly
    when its sign bit is set, i.e. when the int16 with the same bits is negative, so clamping that int16 at 0 is the
    ReLU (negative numbers and -0 become +0). Measured 5x faster on a CPU than PyTorch's bf16 ``relu_``, which
    converts every element to float32 and back, and the hidden layers' ReLUs were ~10 % of the bf16 decoder. The
    one difference: a NaN with its sign bit set becomes 0 instead of staying NaN (NaN cannot reach the networks'
    hidden layers: inputs are checked finite and bf16 has float32's range)."""
    if x.dtype == torch.bfloat16:
        x.view(torch.int16).clamp_min_(0)
        return x
    return x.relu_()


class ReLU(nn.Module):
    """``nn.ReLU(inplace=True)`` through :func:`relu_` (no parameters: checkpoint keys are unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu_(x)


def float_stream(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is bf16/fp16 (an autocast product's output), to start a residual stream that must
    not be rounded to the low precision after every block; a float32 or float64 ``x`` is returned unchanged."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def float_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` in float32 for a bf16/fp16 ``x``, as CUDA autocast runs every LayerNorm; CPU autocast would keep
    it in bf16, and with it the residual stream that starts there (HAT-L's and SwinIR's token streams), rounded to
    bf16 after every block instead of kept in float32 as in the official AMP."""
    return norm(float_stream(x))


def fused_linear_relu_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear_relu` runs the fused oneDNN product (bf16 weights, CPU, inference, oneDNN built in)."""
    return (weight.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled()
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; with bf16 weights on a CPU through the same oneDNN product with the bias in
    its epilogue as :func:`linear_relu` (bitwise ``F.linear``'s numbers: tested), which skips the pass that first
    copies the bias into the output (measured ~25 % faster for the 192 -> 576 q/k/v products)."""
    if fused_linear_relu_applies(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x.to(weight.dtype), weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def linear_relu(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``relu(linear(x))``. With bf16 weights on a CPU (weights cast by :func:`cast_weights`) one oneDNN product
    with the bias and the ReLU applied as it writes its output (the fused kernel PyTorch's own compiler uses,
    ``mkldnn._linear_pointwise``), ``x`` cast to bf16 first as autocast would: the same numbers as the linear then
    the ReLU (tested bitwise), in one pass over the output instead of three (measured 2.6x faster for a 192 -> 768
    layer). Elsewhere the layer, then :func:`relu_`."""
    if fused_linear_relu_applies(x, linear.weight):
        return torch.ops.mkldnn._linear_pointwise(x.to(linear.weight.dtype), linear.weight, linear.bias, "relu",
                                                  [], "")
    return relu_(linear(x))


def linear_gelu(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``gelu(linear(x))`` (exact, erf GELU), fused like :func:`linear_relu` with bf16 weights on a CPU. There the
    GELU is applied to the float32 accumulator before the one rounding to bf16, where autocast rounds the linear's
    output to bf16 first and the GELU's again: not bitwise autocast's numbers, within one bf16 rounding of them."""
    if fused_linear_relu_applies(x, linear.weight):
        return torch.ops.mkldnn._linear_pointwise(x.to(linear.weight.dtype), linear.weight, linear.bias, "gelu",
                                                  [], "none")
    return F.gelu(linear(x))


# ---------------------------------------------------------------------------------------------------------------
# Fused glue between the products (bf16 on a CPU). The compiled module's CPU kernels (cuda/network_cpu.cpp) do in
# one pass what PyTorch does in four or five: widen a bf16 branch and add it to the float32 residual stream, then
# LayerNorm the stream and round it to bf16 for the next product; rotate bf16 q and k by RoPE in float32; window
# attention (cuda/attention_cpu.cpp) with its scores and softmax in float32. The model
# hands the module in for the duration of a bf16 forward (GSASRModel.precision, through fused_glue); everywhere
# else, and where it was not built, the functions below run PyTorch's own operations.
# ---------------------------------------------------------------------------------------------------------------

_glue: ContextVar[ModuleType | None] = ContextVar("gsasr_fused_glue", default=None)


@contextlib.contextmanager
def fused_glue(kernels: ModuleType | None):
    """Inside the block (in this thread), :func:`add_`, :func:`add_norm`, :func:`rope_` and
    :func:`window_attention` use ``kernels`` (the compiled module, or what kernel_self_check.usable left of it) where
    their inputs fit; None changes nothing."""
    token = _glue.set(kernels)
    try:
        yield
    finally:
        _glue.reset(token)


def _glue_for(x: torch.Tensor) -> ModuleType | None:
    """The fused kernels, when active and ``x`` is a contiguous float32 CPU stream."""
    kernels = _glue.get()
    if kernels is None or x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous():
        return None
    return kernels


def _fits(term: torch.Tensor, x: torch.Tensor) -> bool:
    """``term`` can be added by the kernel: contiguous float32/bf16, x's shape or one value per channel."""
    return (term.dtype in (torch.float32, torch.bfloat16) and term.device.type == "cpu" and term.is_contiguous()
            and (term.shape == x.shape or term.shape == x.shape[-1:]))


def add_(x: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """``x += term``. A float32 ``x`` and a bf16/fp16 ``term`` (a residual stream and an autocast branch) add through
    a float32 copy of the term: the same sum (PyTorch's mixed-dtype add also widens before adding), but its
    mixed-dtype in-place kernel was measured ~40 % slower on a CPU than the widening copy plus a float32 add. Under
    :func:`fused_glue` a bf16 term is widened and added in one pass (the same sums, bit for bit)."""
    kernels = _glue_for(x)
    if kernels is not None and term.dtype == torch.bfloat16 and _fits(term, x):
        kernels.residual_layer_norm(x, term, None, None, 0.0, False)
        return x
    if x.dtype == torch.float32 and term.dtype in (torch.bfloat16, torch.float16):
        term = term.float()
    return x.add_(term)


def add_norm(x: torch.Tensor, term: torch.Tensor | None, norm: nn.LayerNorm) -> torch.Tensor:
    """``x += term`` (none when None), then ``norm(x)``: a residual step followed by the next sub-layer's LayerNorm.

    Under :func:`fused_glue` one pass that returns the LayerNorm already rounded to bf16, the dtype the next product
    takes it in; the stream's sums are bitwise :func:`add_`'s, the LayerNorm is PyTorch's formula with the mean and
    variance summed in another order (so a bf16 value may round the other way, ~1e-5 of them). Elsewhere
    :func:`add_`, then the module (float32 under autocast, as the official model)."""
    kernels = _glue_for(x)
    if (kernels is not None and (term is None or _fits(term, x)) and norm.weight is not None
            and norm.bias is not None and norm.weight.dtype == torch.float32 and len(norm.normalized_shape) == 1):
        return kernels.residual_layer_norm(x, term, norm.weight, norm.bias, norm.eps, True)
    if term is not None:
        add_(x, term)
    return norm(x)


def rope_fusable(*tokens: torch.Tensor) -> bool:
    """Whether :func:`rope_` applies to all of ``tokens``: under :func:`fused_glue`, contiguous bf16 CPU tensors of
    shape (windows, T, channels)."""
    return _glue.get() is not None and all(
        t.dtype == torch.bfloat16 and t.device.type == "cpu" and t.dim() == 3 and t.is_contiguous() for t in tokens)


def rope_(tokens: torch.Tensor, columns: int, width: int, rotation: torch.Tensor) -> None:
    """Rotate the first ``columns`` channels of bf16 ``tokens`` (windows, T, channels) in place by RoPE: heads of
    ``width`` channels side by side (q, or q | k), ``rotation`` from :func:`gsasr.archs.blocks.rope_rotation`. In
    float32, rounded to bf16 once, as :func:`gsasr.archs.blocks.apply_rope` (bitwise in tests). Only where
    :func:`rope_fusable` says so."""
    _glue.get().rope_(tokens, columns, width, rotation)


def window_attention_fusable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> bool:
    """Whether :func:`window_attention` applies: under :func:`fused_glue` on a CPU whose kernel can run
    (``attention_available``), bf16 q (windows, Tq, C) and k, v (windows, Tk, C) with unit channel stride, heads of
    an even number of channels."""
    kernels = _glue.get()
    return (kernels is not None and getattr(kernels, "attention_available", lambda: False)()
            and all(t.dtype == torch.bfloat16 and t.device.type == "cpu" and t.dim() == 3 and t.stride(-1) == 1
                    for t in (q, k, v))
            and k.shape == v.shape and k.shape[0] == q.shape[0] and k.shape[2] == q.shape[2]
            and q.shape[-1] % heads == 0 and (q.shape[-1] // heads) % 2 == 0)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(head_dim) + bias) v`` per window and head, from bf16 q (windows, Tq, C) and k, v
    (windows, Tk, C) (heads side by side in C), as (windows, Tq, C) bf16: SDPA's result in the layout the output
    projection reads. ``bias``: None, or (heads, Tq, Tk), the same for every window, added in float32. The
    compiled kernel (cuda/attention_cpu.cpp): the score and output products in oneDNN's bf16 batch-reduce GEMM with
    float32 results, an exact float32 softmax, the weights rounded to bf16 for the second product as PyTorch's
    flash attention rounds them. Only where :func:`window_attention_fusable` says so."""
    if bias is not None:
        bias = bias.to(torch.float32).contiguous()
    return _glue.get().window_attention(q, k, v, heads, (q.shape[-1] // heads) ** -0.5, bias)
