"""The one build description of the native module (``cuda/``: the rasteriser and the networks' bf16 CPU kernels):
sources, flags and build folder.

Used by ``install.py`` (ahead-of-time build) and by :mod:`gsasr.render._native` (to find, or with
``GSASR_JIT=1`` build, the compiled module). Importing this file does nothing; :func:`build` compiles with
ninja through ``torch.utils.cpp_extension.load``, which rebuilds only what changed (so running it twice is cheap).
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import sys
from pathlib import Path

NAME = "gsasr_native"
"""Python module name of the compiled extension (its ``PyInit_`` symbol)."""

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIR = REPO / "cuda"
CPU_SOURCES = ("ops.cpp", "render_cpu.cpp", "terms_cpu.cpp", "network_cpu.cpp", "attention_cpu.cpp")
CUDA_SOURCES = ("render_cuda.cu",)
HEADERS = ("gsasr_math.h",)

# No floating-point contraction anywhere: the kernels must round like the PyTorch reference (gsasr_math.h).
# No -march: the module must load on any CPU of its architecture (a build folder can be copied or shared);
# the AVX2 + FMA pixel loop is compiled per function (target attributes) and picked at run time
# (cuda/render_cpu.cpp).
# -ffinite-math-only -fno-signed-zeros only let GCC turn the exponent clamp into vector min/max: inputs are
# checked finite and every value in the kernels is bounded; they change no rounding.
# -fopenmp: at::parallel_for is a header template whose OpenMP pragmas are compiled here; without the flag the
# tiles would run on one thread.
CXX_FLAGS = (["-O3", "-ffp-contract=off", "-fno-math-errno", "-ffinite-math-only", "-fno-signed-zeros",
              "-fopenmp"] if os.name != "nt" else ["/O2", "/fp:precise", "/openmp"])
LD_FLAGS = ["-fopenmp"] if os.name != "nt" else []
NVCC_FLAGS = ["-O3", "-fmad=false", "-DGSASR_WITH_CUDA"]


def torch_cuda_version() -> str | None:
    """The CUDA version PyTorch was built with, None for a CPU-only PyTorch."""
    import torch

    return torch.version.cuda


def nvcc_path() -> str | None:
    """nvcc from CUDA_HOME / CUDA_PATH, else from PATH."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def cuda_reason() -> str | None:
    """None when the CUDA kernels can be built here, else why not (and what to install)."""
    if torch_cuda_version() is None:
        return "PyTorch is a CPU-only build (install a CUDA build of PyTorch to get the cuda backend)"
    if nvcc_path() is None:
        return "nvcc was not found (install the CUDA toolkit matching PyTorch's CUDA and set CUDA_HOME)"
    return None


def build_dir(with_cuda: bool) -> Path:
    """Folder of the compiled module, keyed by Python, torch and CUDA versions (a torch upgrade means a rebuild)."""
    import torch

    key = (f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}-"
           f"{'cu' + str(torch_cuda_version()) if with_cuda else 'cpu'}-{platform.machine()}")
    return REPO / "build" / "native" / re.sub(r"[^A-Za-z0-9_.+-]", "_", key)


def library_path(with_cuda: bool) -> Path:
    """Path of the compiled module file inside :func:`build_dir` (the name cpp_extension gives it)."""
    return build_dir(with_cuda) / f"{NAME}{'.pyd' if os.name == 'nt' else '.so'}"


def sources(with_cuda: bool) -> list[str]:
    names = CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())
    return [str(SOURCE_DIR / name) for name in names]


def build(with_cuda: bool, verbose: bool = False):
    """Compile (or bring up to date) and import the extension; returns the module. Raises on a failed build."""
    from torch.utils import cpp_extension

    folder = build_dir(with_cuda)
    folder.mkdir(parents=True, exist_ok=True)
    cflags = CXX_FLAGS + (["-DGSASR_WITH_CUDA"] if with_cuda else [])
    return cpp_extension.load(name=NAME, sources=sources(with_cuda), extra_cflags=cflags,
                              extra_cuda_cflags=NVCC_FLAGS if with_cuda else None,
                              extra_include_paths=[str(SOURCE_DIR)], extra_ldflags=LD_FLAGS,
                              build_directory=str(folder), with_cuda=with_cuda, verbose=verbose)
