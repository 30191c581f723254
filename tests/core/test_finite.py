"""gsasr.finite.all_finite: the one-reduction NaN/inf test used to validate images and Gaussians."""
from __future__ import annotations

import pytest
import torch

from gsasr.finite import all_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_any_single_bad_value_is_found(dtype, bad):
    values = torch.randn(37, 9).to(dtype)
    assert all_finite(values)
    for index in [(0, 0), (36, 8), (17, 4)]:
        broken = values.clone()
        broken[index] = bad
        assert not all_finite(broken), (dtype, bad, index)
        assert not all_finite(broken.t()), "a non-contiguous view"


def test_extreme_finite_values_empty_and_integer_tensors_pass():
    assert all_finite(torch.tensor([torch.finfo(torch.float32).max, torch.finfo(torch.float32).min, 0.0]))
    assert all_finite(torch.empty(0, 9))
    assert all_finite(torch.arange(5))
