"""The native backends' self-check: it passes for working kernels, catches broken ones, and switches them off."""
from __future__ import annotations

import logging
import re

import pytest
import torch
from tolerances import NATIVE_RENDER_ABS, TRITON_RENDER_ABS

from gsasr import render
from gsasr.cli import main
from gsasr.errors import BackendUnavailableError
from gsasr.render import reference, self_check


def _available_device(name: str) -> torch.device:
    reason = render.available_backends()[name]
    if reason is not None:
        pytest.skip(f"the {name} backend is unavailable: {reason}")
    return render.backend_device(name)


@pytest.mark.parametrize("name", ["cpu", "cuda", "triton"])
def test_every_available_native_backend_passes_its_self_check(name):
    device = _available_device(name)
    check = render.run_self_check(name, device)
    tolerance = TRITON_RENDER_ABS if name == "triton" else NATIVE_RENDER_ABS
    assert check.passed and check.max_error <= tolerance, check
    assert re.fullmatch(r"self-check passed, max error \d\.\de-\d\d", check.describe())


def _reference(raw, scale, canvas, dmax, region):
    return reference.render_gaussians(raw, scale, canvas, dmax=dmax, region=region)


def _negated_correlation(raw, *args):
    flipped = raw.clone()
    flipped[:, 2] = -flipped[:, 2]
    return _reference(flipped, *args)


def _region_at_the_origin(raw, scale, canvas, dmax, region):
    return _reference(raw, scale, canvas, dmax, (0, 0, *region[2:]))


def _last_lr_pixel_missed(raw, *args):
    return _reference(raw[:-16], *args)


def _slightly_too_bright(raw, *args):
    return _reference(raw, *args) * 1.001


def _raises(*args):
    raise RuntimeError("device kernel launch failed\nsecond line")


def _wrong_shape(raw, scale, canvas, dmax, region):
    return torch.zeros(3, canvas[0], canvas[1])


@pytest.mark.parametrize(("broken", "detail"), [
    (_negated_correlation, r"max error \S+ against the PyTorch reference \(allowed 0.0001\)"),
    (_region_at_the_origin, "max error"),
    (_last_lr_pixel_missed, "max error"),
    (_slightly_too_bright, "max error"),
    (_raises, r"it raised RuntimeError: device kernel launch failed$"),
    (_wrong_shape, r"returned torch.float32 \(3, 12, 15\) instead of float32 \(3, 7, 9\)"),
])
def test_the_fixed_case_catches_broken_kernels(broken, detail):
    """A kernel that ignores rho's sign, a region's offset or a few Gaussians, is 0.1 % off, raises or returns the
    wrong shape fails, with the reason."""
    assert self_check.run(_reference, torch.device("cpu")).passed
    check = self_check.run(broken, torch.device("cpu"))
    assert not check.passed
    assert re.search(detail, check.describe()), check.describe()


def test_a_backend_that_fails_is_switched_off_with_one_error_line(monkeypatch, caplog):
    device = _available_device("cpu")
    real = render._render_native

    def broken_cpu(name, *args):
        out = real(name, *args)
        return out + 0.01 if name == "cpu" else out

    monkeypatch.delenv(render.ENV_VAR, raising=False)
    monkeypatch.setattr(render, "_render_native", broken_cpu)
    monkeypatch.setattr(render, "_self_checks", {})
    monkeypatch.setattr(render, "_fallback_logged", False)
    raw = torch.zeros(4, 9)
    with caplog.at_level(logging.WARNING, logger="gsasr.render"):
        assert render.active_backend(device) == "torch"
        render.render_gaussians(raw, 2.0, (4, 4))
        with pytest.raises(BackendUnavailableError, match=r"'cpu' is unavailable: its self-check failed: max error "
                                                          r"1\.0e-02"):
            render.render_gaussians(raw, 2.0, (4, 4), backend="cpu")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["GSASR: the cpu rasteriser is switched off on cpu for this process: its self-check failed: "
                      "max error 1.0e-02 against the PyTorch reference (allowed 0.0001)."]


def test_info_shows_each_native_backends_self_check(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name, reason in render.available_backends().items():
        line = next(line for line in out.splitlines() if line.strip().startswith(f"backend {name} "))
        if reason is not None:
            assert "unavailable: " in line
        elif name != "torch":
            assert re.search(r"available on [^;]+; self-check passed, max error \d\.\de-\d\d$", line), line
