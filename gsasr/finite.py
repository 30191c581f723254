"""A fast all-finite test for big tensors (input validation of images and Gaussians)."""
from __future__ import annotations

import torch
from torch import Tensor


def all_finite(tensor: Tensor) -> bool:
    """True when no value is NaN or infinite (True for an empty tensor).

    One reduction instead of ``torch.isfinite(t).all()``, which materialises a boolean per value: at the 9 M
    values of a 1024^2 render that took 50 ms, as long as a fifth of the compiled CPU render itself. aminmax
    propagates NaN to both results, and an infinity shows in one of them.
    """
    if tensor.numel() == 0 or not tensor.is_floating_point():
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))
