"""Reusable scratch buffers for the decoder's per-strip and per-chunk intermediates.

Why: the decoder runs UPNet, the Gaussian heads and the Winograd convolutions strip by strip, and each strip's
biggest intermediates are 5-25 MB. Allocated afresh per strip, they go through the C allocator, which hands
blocks that big to the operating system and back (glibc maps anything above its mmap threshold, and trims the heap
top beyond twice that): every strip then touches fresh zeroed pages. Measured on a 2-core CPU, the decoder took
35 % longer when that happened to every big block (1.3 M page faults per 96^2 forward), and a process's first
forward always pays some of it. A workspace allocates each buffer once per forward and hands out views of it.
"""
from __future__ import annotations

import math

import torch


class Workspace:
    """Named buffers that grow to the largest size asked for and are reused for every later request.

    A view handed out stays valid until the next :meth:`take` of the same name, which may overwrite it: callers
    take a name for data they are done with by the time the same name is taken again.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A contiguous, uninitialised tensor of ``shape`` and ``dtype`` in the named buffer."""
        count = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < count or buffer.dtype != dtype:
            buffer = self._buffers[name] = torch.empty(count, device=self.device, dtype=dtype)
        return buffer[:count].view(shape)
