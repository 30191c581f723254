"""The rasteriser tests' process setup: Triton's interpreter where there is no GPU.

``@triton.jit`` reads ``TRITON_INTERPRET`` when it decorates a kernel, and gsasr imports its kernel
(gsasr/render/_triton_kernel.py) lazily, on the first triton render. pytest imports this file before it collects
this folder, and every file is collected before any test runs, so setting the variable here, at import, is early
enough for every test of the session, whichever order they run in (setting it in a test or a fixture would come
too late if another test had already rendered with triton, and would leave the mode up to test order). It stays
set for the whole session: triton also reads the knob while a kernel runs (its constexpr functions), so unsetting
it after the import would mix modes. Subprocesses started by later tests inherit it (harmless: ``auto`` never
picks the interpreter). On a machine with a GPU (bench/device_session.sh) it is left alone, and the triton tests run
the compiled kernel on the GPU; a value set by the caller is kept either way.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
