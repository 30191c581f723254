"""Build the native GSASR rasteriser ahead of time (run by ComfyUI-Manager after requirements.txt, or by hand).

    python install.py            # from the ComfyUI-GSASR folder, with ComfyUI's Python

Compiles ``cuda/`` with ninja into the build folder of ``gsasr/render/_build.py`` (keyed by Python, torch and
CUDA versions): the CPU kernel always, the CUDA kernel too where PyTorch has CUDA and nvcc exists (for the local
GPU's architecture). Safe to run twice (ninja rebuilds only what changed). Never installs or changes torch.
Always exits 0 and prints a short summary: without a compiler the pack still works, with the PyTorch reference.
"""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    try:
        import torch
    except ImportError:
        print("[GSASR install] PyTorch is not installed in this Python; nothing built (ComfyUI provides torch).")
        return 0
    from gsasr.render import _build

    _report_triton()
    no_cuda = _build.cuda_reason()
    attempts = [True, False] if no_cuda is None else [False]
    print(f"[GSASR install] torch {torch.__version__}, Python {sys.version.split()[0]}; building the native "
          f"rasteriser ({'CPU + CUDA' if no_cuda is None else 'CPU only: ' + no_cuda})...", flush=True)
    for with_cuda in attempts:
        start = time.perf_counter()
        try:
            module = _build.build(with_cuda=with_cuda)
        except Exception as exc:  # a compiler error must not fail the ComfyUI install
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
            print(f"[GSASR install] {'CUDA' if with_cuda else 'CPU'} build failed: {detail[-1] if detail else exc}")
            continue
        folder = _build.build_dir(with_cuda)
        backends = "cpu and cuda" if module.has_cuda() else "cpu"
        print(f"[GSASR install] built in {time.perf_counter() - start:.0f} s: {folder}")
        print(f"[GSASR install] backends: {backends} (auto picks the one matching the image's device)")
        if no_cuda is not None:
            print(f"[GSASR install] no cuda backend: {no_cuda}")
        print(f"[GSASR install] bf16 CPU network kernels: {_network_kernels_state(module)}")
        return 0
    print("[GSASR install] the native rasteriser could not be built; GSASR still works with the slower PyTorch "
          "reference. Install a C++ compiler (g++ or MSVC Build Tools) and ninja, then run `python install.py`.")
    return 0


def _network_kernels_state(module) -> str:
    """Whether bf16 forwards on this machine will use the module's network kernels (cuda/network_cpu.cpp,
    attention_cpu.cpp)."""
    from gsasr.render import cpu_network_kernels_reason

    reason = cpu_network_kernels_reason()
    if reason is not None:
        return f"not used here: {reason}; PyTorch's operations run instead"
    attention = "with" if module.attention_available() else "without"
    return f"in use for amp bf16 ({attention} the window attention kernel)"


def _report_triton() -> None:
    """Triton needs no build: say whether it can render GPU images here, since it is the fast path on a GPU when
    nvcc is missing (most ComfyUI installs)."""
    import importlib.util

    from gsasr.render import _triton

    if importlib.util.find_spec("triton") is None:
        state = ("not installed (optional: it renders on NVIDIA/AMD GPUs without nvcc; PyTorch's CUDA wheels for "
                 "Linux include it, on Windows `pip install triton-windows`)")
    elif _triton.unavailable_reason() is None:
        state = "available (compiles at run time, no nvcc needed)"
    else:
        state = "installed, but PyTorch sees no GPU for it here"
    print(f"[GSASR install] triton backend: {state}")


if __name__ == "__main__":
    sys.exit(main())
