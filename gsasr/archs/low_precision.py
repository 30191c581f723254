"""Running a network's matrix products in bf16 (or fp16) from weights cast once, not once per call.

Why: under ``torch.autocast`` every ``nn.Linear`` and ``nn.Conv2d`` call casts its float32 weight and bias to the
autocast dtype again (autocast only caches casts of weights that require grad, and inference runs without). On a
CPU with bf16 matrix units a 192 x 192 product runs in a fraction of a millisecond, so those casts, and convolution
weights in the layout oneDNN does not want, cost about as much as the products themselves.

:func:`cast_weights` swaps, for the duration of a block, every Linear's and Conv2d's weight and bias for a copy in
the low-precision dtype (convolution weights channels-last, the layout oneDNN's bf16 kernels run fastest on). The
copies are made once per model and dtype and kept until a parameter changes (a new tensor or an in-place update);
parameters made under ``torch.inference_mode()`` have no version counter, so for them the copies are made once per
block and not kept. The model enters the block once per image, around all its tiles.
Autocast still runs around it and casts the activations exactly as before, so the numbers are autocast's own: the
same rounding of the same weights, only not repeated.
"""
from __future__ import annotations

import contextlib

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


def add_(x: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """``x += term``. A float32 ``x`` and a bf16/fp16 ``term`` (a residual stream and an autocast branch) add through
    a float32 copy of the term: the same sum (PyTorch's mixed-dtype add also widens before adding), but its
    mixed-dtype in-place kernel was measured ~40 % slower on a CPU than the widening copy plus a float32 add."""
    if x.dtype == torch.float32 and term.dtype in (torch.bfloat16, torch.float16):
        term = term.float()
    return x.add_(term)
