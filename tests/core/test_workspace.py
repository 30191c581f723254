"""The decoder's reusable scratch buffers (gsasr/archs/workspace.py)."""
from __future__ import annotations

import torch

from gsasr.archs.workspace import Workspace


def test_a_name_reuses_its_buffer_and_grows_when_needed():
    workspace = Workspace("cpu")
    first = workspace.take("a", (4, 8), torch.float32)
    assert first.shape == (4, 8) and first.is_contiguous()
    smaller = workspace.take("a", (3, 5), torch.float32)
    assert smaller.data_ptr() == first.data_ptr() and smaller.is_contiguous()  # no new allocation
    other = workspace.take("b", (4, 8), torch.float32)
    assert other.data_ptr() != first.data_ptr()  # names never share storage
    bigger = workspace.take("a", (10, 10), torch.float32)
    assert bigger.shape == (10, 10)
    assert workspace.take("a", (2, 2), torch.float32).data_ptr() == bigger.data_ptr()  # the grown one is kept


def test_a_new_dtype_gets_a_new_buffer():
    workspace = Workspace("cpu")
    workspace.take("a", (16,), torch.float32)
    doubles = workspace.take("a", (4,), torch.float64)
    assert doubles.dtype == torch.float64 and doubles.shape == (4,)
