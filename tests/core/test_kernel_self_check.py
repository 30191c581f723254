"""The once-per-process check of the networks' compiled CPU kernels (archs/kernel_self_check.py): the real kernels
pass; deliberately broken ones are caught, logged, and replaced by PyTorch's operations."""
from __future__ import annotations

import logging

import pytest
import torch

from gsasr import render
from gsasr.archs import kernel_self_check


@pytest.fixture
def module(network_kernels):
    return network_kernels


class Broken:
    """The compiled module with some kernels replaced, and the window attention offered or not."""

    def __init__(self, module, attention: bool = True, **replacements):
        self.module, self.attention, self.replacements = module, attention, replacements
        self.calls = 0

    def attention_available(self) -> bool:
        return self.attention

    def __getattr__(self, name):
        self.calls += 1
        return self.replacements.get(name, getattr(self.module, name))


def sdpa_kernel(q, k, v, heads, scale, bias=None):
    """A correct window attention in PyTorch, so attention cases run on any CPU."""
    split = [t.unflatten(-1, (heads, -1)).transpose(1, 2).float() for t in (q, k, v)]
    out = torch.nn.functional.scaled_dot_product_attention(*split, attn_mask=bias, scale=scale)
    return out.transpose(1, 2).flatten(2).bfloat16()


def test_the_built_kernels_pass(module):
    result = kernel_self_check.run(module)
    assert result == kernel_self_check.KernelCheck(None, None), result.describe()
    assert kernel_self_check.usable(module) is module


def test_a_working_attention_passes(module):
    assert kernel_self_check.run(Broken(module, window_attention=sdpa_kernel)).describe() == "self-check passed"


def zero_norm(x, term, weight, bias, eps, normalize):
    if term is not None:
        x += term.float()
    return torch.zeros(x.shape, dtype=torch.bfloat16) if normalize else None


def double_add(x, term, weight, bias, eps, normalize):
    x += term.float()
    x += term.float()
    return torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps).bfloat16() if normalize else None


def raising(*args, **kwargs):
    raise RuntimeError("illegal instruction, as it were")


GLUE_BREAKS = {"residual_layer_norm writes zeros": (dict(residual_layer_norm=zero_norm), "residual_layer_norm"),
               "the residual is added twice": (dict(residual_layer_norm=double_add), "residual add"),
               "rope_ does nothing": (dict(rope_=lambda *args: None), "rope_"),
               "rope_ raises": (dict(rope_=raising), "raised RuntimeError")}


@pytest.mark.parametrize("case", GLUE_BREAKS)
def test_a_broken_glue_kernel_turns_all_kernels_off(module, case, caplog):
    replacements, reason = GLUE_BREAKS[case]
    broken = Broken(module, window_attention=sdpa_kernel, **replacements)
    with caplog.at_level(logging.ERROR, logger=kernel_self_check.__name__):
        assert kernel_self_check.usable(broken) is None
    assert reason in kernel_self_check.check(broken).glue
    assert [r.levelno for r in caplog.records] == [logging.ERROR] and "everything" in caplog.text


ATTENTION_BREAKS = {
    "zeros": (lambda q, k, v, heads, scale, bias=None: torch.zeros_like(q), "window_attention differs"),
    "the bias is ignored": (lambda q, k, v, heads, scale, bias=None: sdpa_kernel(q, k, v, heads, scale),
                            "window_attention differs"),
    "the wrong scale": (lambda q, k, v, heads, scale, bias=None: sdpa_kernel(q, k, v, heads, 1.0, bias),
                        "window_attention differs"),
    "raises": (raising, "raised RuntimeError")}


@pytest.mark.parametrize("case", ATTENTION_BREAKS)
def test_a_broken_attention_leaves_the_glue_on(module, case, caplog):
    kernel, reason = ATTENTION_BREAKS[case]
    broken = Broken(module, window_attention=kernel)
    with caplog.at_level(logging.ERROR, logger=kernel_self_check.__name__):
        usable = kernel_self_check.usable(broken)
    assert usable is not None and not usable.attention_available()
    assert usable.residual_layer_norm is module.residual_layer_norm  # the glue is still the compiled one
    result = kernel_self_check.check(broken)
    assert result.glue is None and reason in result.attention
    assert "attention" in caplog.text


def test_checked_once_per_process(module):
    counted = Broken(module, window_attention=sdpa_kernel)
    kernel_self_check.usable(counted)
    calls = counted.calls
    assert calls > 0
    for _ in range(3):
        kernel_self_check.usable(counted)
    assert counted.calls == calls
    assert kernel_self_check.usable(None) is None


class FakeModule:
    def __init__(self, vectorized: bool | None):
        if vectorized is not None:
            self.network_kernels_vectorized = lambda: vectorized


@pytest.mark.parametrize("compiled, reason", [
    ((None, "not built for this test"), "not built for this test"),
    ((FakeModule(None), None), "rerun `python install.py`"),
    ((FakeModule(False), None), "AVX-512 and bf16"),
])
def test_kernels_are_handed_out_only_where_they_run(monkeypatch, compiled, reason):
    """Not built, built before the kernels, or a CPU/compiler without the vectorised path: no kernels, and the
    reason says which (python -m gsasr info and install.py print it)."""
    monkeypatch.setattr(render, "_compiled_cache", compiled)
    assert render.cpu_network_kernels() is None
    assert reason in render.cpu_network_kernels_reason()


def test_kernels_are_handed_out_where_they_run(monkeypatch):
    module = FakeModule(True)
    monkeypatch.setattr(render, "_compiled_cache", (module, None))
    assert render.cpu_network_kernels() is module and render.cpu_network_kernels_reason() is None
