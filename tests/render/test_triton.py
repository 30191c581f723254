"""The triton backend: how it is chosen and set up, golden images, strips, and its launch knob.

Its parity with the reference on fresh inputs runs with the other native backends (test_native.py: decoder-like
grids with |rho| -> 1 and sigma -> 0, centres off the canvas, non-square and 1-pixel canvases, regions, fp16 and
bf16 inputs). Without a GPU it runs in Triton's interpreter on CPU tensors (tests/render/conftest.py sets
TRITON_INTERPRET=1 for this folder): the cases stay small, the interpreter costing ~1 s per 10^4 candidate tests.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import golden_render_params, render_golden_case
from gaussian_grids import grid_gaussians
from tolerances import TRITON_GOLDEN_RENDER_ABS, TRITON_RENDER_ABS

from gsasr import render, tiling
from gsasr.errors import InvalidInputError
from gsasr.render import _triton
from gsasr.render.self_check import SelfCheck

REPO = Path(__file__).resolve().parents[2]

# Run in a fresh process without TRITON_INTERPRET (this session's kernel module is interpreted): compile both kernels
# ahead of time for an H100 (sm_90) with the ptxas bundled in triton's wheel, and print the render kernel's PTX
# multiply-adds per candidate block size; then, where this triton has its AMD backend, both kernels for an MI300
# (gfx942; there LLVM's exp lowering keeps two multiply-adds of its own per weight: only compiling is checked).
_COMPILE_FOR_SM90 = """
import json, sys
import triton
from triton.backends import backends
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from gsasr.render import _triton, _triton_kernel as k
targets = [GPUTarget("cuda", 90, 32)] + ([GPUTarget("hip", "gfx942", 64)] if "amd" in backends else [])
target = targets[0]
ptr = {"params_ptr": "*fp32", "boxes_ptr": "*i32"}
config = _triton.LAUNCH["compiled"]
options = {"num_warps": config.num_warps, "enable_fp_fusion": False}
sig = {**ptr, "cols_ptr": "*i64", "rows_ptr": "*i64", "gx_ptr": "*fp32", "gy_ptr": "*fp32", "out_ptr": "*fp32",
       "grid_w": "i32", "h": "i32", "w": "i32", "TILE_H": "constexpr", "TILE_W": "constexpr", "BLOCK": "constexpr"}
fma = {}
for block in sorted({1, config.block, 16}):
    src = ASTSource(fn=k.render_tiles, signature=sig,
                    constexprs={"TILE_H": config.tile_h, "TILE_W": config.tile_w, "BLOCK": block})
    fma[block] = triton.compile(src, target=target, options=options).asm["ptx"].count("fma.rn.f32")
render_sig = sig
sig = {**ptr, **dict.fromkeys(["n", "canvas_h", "canvas_w", "y0", "x0", "h", "w"], "i32"), "BLOCK": "constexpr"}
for target in targets:
    triton.compile(ASTSource(fn=k.window_boxes, signature=sig, constexprs={"BLOCK": 1024}), target=target,
                   options=options)
    triton.compile(ASTSource(fn=k.render_tiles, signature=render_sig, constexprs={
        "TILE_H": config.tile_h, "TILE_W": config.tile_w, "BLOCK": config.block}), target=target, options=options)
print(json.dumps({"interpreted": k.INTERPRETED, "fma": fma, "targets": [t.backend for t in targets]}))
"""


def _triton_device() -> torch.device:
    reason = render.available_backends()["triton"]
    if reason is not None:
        pytest.skip(f"the triton backend is unavailable: {reason}")
    return render.backend_device("triton")


def test_ci_runs_the_triton_backend_in_its_interpreter():
    if os.environ.get("CI", "").lower() != "true":
        pytest.skip("only enforced in CI (CI=true), where .ci/run installs triton")
    assert render.available_backends()["triton"] is None, render.available_backends()["triton"]
    assert _triton.interpreted() == (not torch.cuda.is_available())


def test_a_gpu_machine_runs_the_compiled_triton_backend():
    """On a lent GPU (bench/device_session.sh sets GSASR_EXPECT_CUDA=1 and unsets TRITON_INTERPRET) the triton tests
    must run the compiled kernel on the GPU, not skip or interpret."""
    if os.environ.get("GSASR_EXPECT_CUDA") != "1":
        pytest.skip("only enforced where GSASR_EXPECT_CUDA=1 (bench/device_session.sh on a GPU machine)")
    assert render.available_backends()["triton"] is None, render.available_backends()["triton"]
    assert not _triton.interpreted() and render.backend_device("triton").type == "cuda"


def test_the_kernels_compile_for_a_gpu_without_fused_multiply_adds():
    """The compiled path, checked without a GPU: both kernels go through Triton's whole NVIDIA pipeline (TTIR, TTGIR,
    LLVM, PTX, ptxas) for sm_90, and the render kernel has no fused multiply-add (enable_fp_fusion=False: an FMA
    changes the weight when |rho| -> 1); and through the AMD pipeline for gfx942 where triton has it."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("this triton build has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["interpreted"] is False and report["targets"][0] == "cuda"
    assert set(report["fma"].values()) == {0}, report


def test_the_kernel_is_decorated_in_the_mode_of_the_session():
    """TRITON_INTERPRET must be set before the kernel module is first imported (conftest.py): the interpreted
    kernel is an InterpretedFunction, and the backend then serves CPU tensors only."""
    device = _triton_device()
    out = render.render_gaussians(grid_gaussians(2, 2, seed=1).to(device), 2.0, (4, 4), backend="triton")
    assert out.shape == (3, 4, 4)
    from triton.runtime.interpreter import InterpretedFunction

    module = _triton.kernel()
    assert module.INTERPRETED == _triton.interpreted() == (device.type == "cpu")
    assert isinstance(module.render_tiles, InterpretedFunction) == module.INTERPRETED
    other = torch.device("cuda", 0) if module.INTERPRETED else torch.device("cpu")
    assert "but the Gaussians are on" in render._unusable("triton", other)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: triton compiles for it")
def test_without_a_gpu_or_the_interpreter_triton_is_unavailable_with_a_reason():
    """A fresh process without TRITON_INTERPRET: the backend says why it cannot run; forcing it is an error."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["GSASR_RASTERIZER"] = "triton"
    code = ("import torch; from gsasr import render; print(render.available_backends()['triton']); "
            "render.render_gaussians(torch.zeros(2, 9), 2.0, (4, 4))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert "TRITON_INTERPRET=1" in result.stdout, result.stdout
    assert "BackendUnavailableError: rasteriser backend 'triton' is unavailable" in result.stderr, result.stderr


def test_gsasr_rasterizer_forces_triton(monkeypatch):
    device = _triton_device()
    assert render.run_self_check("triton", device).passed  # run (or cached) before the spy counts renders
    calls = []
    real = _triton.render

    def spy(*args):
        calls.append(args[0].shape[0])
        return real(*args)

    monkeypatch.setattr(_triton, "render", spy)
    monkeypatch.setenv(render.ENV_VAR, "Triton ")
    raw = grid_gaussians(3, 4, seed=2)
    out = render.render_gaussians(raw.to(device), 3.0, (9, 12))
    assert calls == [raw.shape[0]]
    torch.testing.assert_close(out.cpu(), render.render_gaussians(raw, 3.0, (9, 12), backend="torch"),
                               atol=TRITON_RENDER_ABS, rtol=0)


def test_auto_never_picks_the_interpreter_on_the_cpu(monkeypatch):
    monkeypatch.delenv(render.ENV_VAR, raising=False)
    monkeypatch.setattr(render, "_compiled_cache", (None, "not built for this test"))
    monkeypatch.setattr(render, "_fallback_logged", False)
    assert render.AUTO_ORDER["cpu"] == ("cpu",)
    assert render.active_backend("cpu") == "torch"


@pytest.mark.parametrize(("cuda_passes", "triton_passes", "expected"), [
    (True, True, "cuda"), (False, True, "triton"), (False, False, "torch")])
def test_auto_on_a_gpu_tries_cuda_then_triton_then_torch(monkeypatch, caplog, cuda_passes, triton_passes, expected):
    """Simulated GPU (every backend available and serving it, self-checks already run): the first backend whose
    self-check passed wins; when none did, the warning names each one's reason."""
    gpu = torch.device("cuda", 0)
    monkeypatch.delenv(render.ENV_VAR, raising=False)
    monkeypatch.setattr(render, "available_backends", lambda: dict.fromkeys(render.BACKENDS))
    monkeypatch.setattr(render, "_serves", lambda name, device: True)
    monkeypatch.setattr(render, "_fallback_logged", False)
    monkeypatch.setattr(render, "_self_checks", {
        ("cuda", "cuda:0"): SelfCheck(cuda_passes, 1e-7 if cuda_passes else 0.5, "" if cuda_passes else "bad cuda"),
        ("triton", "cuda:0"): SelfCheck(triton_passes, 1e-7, "" if triton_passes else "bad triton")})
    assert render.AUTO_ORDER["cuda"] == ("cuda", "triton")
    with caplog.at_level("WARNING", logger="gsasr.render"):
        assert render.active_backend(gpu) == expected
    if expected == "torch":
        assert "cuda: its self-check failed: bad cuda" in caplog.text
        assert "triton: its self-check failed: bad triton" in caplog.text


def _golden_subset() -> list:
    """Every golden case with a compiled kernel; under the interpreter (~2-4 s per case) one scale per
    architecture (x3.7: the case tests/golden keeps for a clone alone) plus EDSR at x2 and x4."""
    params = golden_render_params()
    if not _triton.interpreted():
        return params
    keep = [p for p in params if p.values[1].endswith("_x3.7") or p.values[1] in ("EDSR_23x31_x2", "EDSR_23x31_x4")]
    return keep or params


@pytest.mark.parametrize(("arch", "case_name"), _golden_subset())
def test_golden_gaussians_render_to_the_official_output(arch, case_name):
    out, expected = render_golden_case(arch, case_name, "triton", _triton_device())
    torch.testing.assert_close(out, expected, atol=TRITON_GOLDEN_RENDER_ABS, rtol=0)


def test_strips_match_the_reference():
    """render_in_strips hands triton slices of whole grid rows and regions that start mid-canvas."""
    device = _triton_device()
    raw = grid_gaussians(10, 8, seed=4, offset=0.4)
    canvas = (37, 29)
    out_hw = (35, 29)
    strips = tiling.render_in_strips(raw.to(device), 3.7, canvas, out_hw, dmax=0.1, backend="triton",
                                     strip_bytes=3 * 4 * out_hw[1] * 6)  # 6 rows per strip
    expected = render.render_gaussians(raw, 3.7, canvas, region=(0, 0, *out_hw), backend="torch")
    torch.testing.assert_close(strips.cpu(), expected, atol=TRITON_RENDER_ABS, rtol=0)


@pytest.mark.parametrize("block", ["1", "8"])
def test_any_block_of_candidates_gives_the_reference(monkeypatch, block):
    """GSASR_TRITON_BLOCK (for measurements) changes how many candidates a kernel step takes, not the result."""
    device = _triton_device()
    monkeypatch.setenv(_triton.BLOCK_ENV_VAR, block)
    assert _triton.launch_config().block == int(block)
    raw = grid_gaussians(3, 3, seed=6)
    canvas = (math.floor(2.5 * 3), math.floor(2.5 * 3))
    out = render.render_gaussians(raw.to(device), 2.5, canvas, dmax=0.3, backend="triton")
    torch.testing.assert_close(out.cpu(), render.render_gaussians(raw, 2.5, canvas, dmax=0.3, backend="torch"),
                               atol=TRITON_RENDER_ABS, rtol=0)


@pytest.mark.parametrize("value", ["3", "128", "fast", "0"])
def test_a_bad_block_setting_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv(_triton.BLOCK_ENV_VAR, value)
    with pytest.raises(InvalidInputError, match="GSASR_TRITON_BLOCK=.* must be a power of two from 1 to 64"):
        _triton.launch_config()


@pytest.mark.parametrize(("canvas", "region"), [((15, 19), (3, 2, 9, 14)), ((1, 23), (0, 0, 1, 23)),
                                               ((23, 1), (4, 0, 15, 1))])
def test_window_boxes_hold_every_pixel_the_window_reaches(canvas, region):
    """The boxes the kernel picks candidates with: every pixel passing the reference's float32 window test is in its
    Gaussian's box, and the box is at most 2 pixels wider per side; empty boxes only where no pixel passes."""
    device = _triton_device()
    raw = grid_gaussians(4, 5, seed=8)
    terms = render.gaussian_terms(raw, 3.8, canvas)
    radius = render.reference.support_radius(terms.sigma, 0.3)
    params = torch.cat([terms.centre, radius, terms.conic, terms.colour], dim=1).contiguous()
    boxes = _triton.window_boxes(params.to(device), canvas, region).cpu()
    gx = render.reference.pixel_coords(canvas[1], region[1], region[3])
    gy = render.reference.pixel_coords(canvas[0], region[0], region[2])
    inside_x = ~((gx[None, :] - terms.centre[:, :1]).abs() > radius[:, :1])
    inside_y = ~((gy[None, :] - terms.centre[:, 1:]).abs() > radius[:, 1:])
    hit = inside_x.any(1) & inside_y.any(1)
    assert bool(hit.any()) and bool((~hit).any())
    for i in range(raw.shape[0]):
        x0, x1, y0, y1 = boxes[i].tolist()
        if not hit[i]:
            assert (x0 > x1) == (y0 > y1) and (x0 > x1 or not (inside_x[i, x0:x1 + 1].any()
                                                               and inside_y[i, y0:y1 + 1].any())), boxes[i]
            continue
        xs, ys = inside_x[i].nonzero().view(-1), inside_y[i].nonzero().view(-1)
        assert x0 <= int(xs[0]) and int(xs[-1]) <= x1 and x1 - x0 <= int(xs[-1] - xs[0]) + 4, (boxes[i], xs)
        assert y0 <= int(ys[0]) and int(ys[-1]) <= y1 and y1 - y0 <= int(ys[-1] - ys[0]) + 4, (boxes[i], ys)
