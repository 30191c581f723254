"""The environment header every benchmark prints first, so runs can be compared (bench/ and bench-paper)."""
from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def environment_header(device: torch.device, renderer: str) -> str:
    """One line: commit, torch, python, device (and its name), threads, renderer backend(s), dtype."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip() or "?"
    except OSError:
        commit = "?"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return (f"# commit {commit} | torch {torch.__version__} | python {platform.python_version()} | device {device} "
            f"({name}) | threads {torch.get_num_threads()} | renderer {renderer} | dtype float32")


@functools.cache
def cpu_bf16_matrix_units() -> str | None:
    """The CPU's native bf16 matrix instructions ("AMX-BF16", "AVX512-BF16"), or None when it has none.

    Where None, PyTorch emulates bf16 products with float32 instructions plus conversions, usually slower than
    plain float32, so ``amp="auto"`` stays off. PyTorch exposes the CPU's feature flags only through private
    functions (``torch.backends.cpu.get_cpu_capability()`` names the vector ISA it dispatches to, e.g. "AVX512",
    which does not say whether bf16 instructions exist), so each query is guarded: an unknown PyTorch answers None.
    """
    cpu = getattr(torch._C, "_cpu", None)
    flags: dict = {}
    try:
        flags = dict(cpu._get_cpu_capability())  # torch >= 2.7: a dict of feature flags
    except Exception:  # noqa: BLE001 -- older or future torch: fall back to the per-feature queries
        for flag, query in (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")):
            try:
                flags[flag] = bool(getattr(cpu, query)())
            except Exception:  # noqa: BLE001 -- not offered by this torch: unknown counts as absent
                flags[flag] = False
    if flags.get("amx_bf16"):
        return "AMX-BF16"
    if flags.get("avx512_bf16"):
        return "AVX512-BF16"
    return None
