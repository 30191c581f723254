"""Output sizes by mode (gsasr.sizing): aspect ratio kept, limiting side exact, clear errors."""
from __future__ import annotations

import pytest

from gsasr.errors import InvalidInputError
from gsasr.sizing import SIZE_MODES, target_size


@pytest.mark.parametrize("in_hw, mode, kwargs, expected", [
    ((432, 768), "fit inside", dict(width=3840, height=2160), (2160, 3840)),    # 16:9 into 4K: exactly x5
    ((512, 768), "fit inside", dict(width=3840, height=2160), (2160, 3240)),    # 3:2: height limits
    ((768, 512), "fit inside", dict(width=3840, height=2160), (2160, 1440)),    # portrait
    ((333, 500), "fit inside", dict(width=1000, height=1000), (666, 1000)),
    ((10, 13), "exact", dict(width=50, height=21), (21, 50)),
    ((600, 400), "longest side", dict(longest_side=3000), (3000, 2000)),
    ((400, 600), "longest side", dict(longest_side=3000), (2000, 3000)),
    ((300, 300), "longest side", dict(longest_side=1001), (1001, 1001)),
    ((1080, 1920), "megapixels", dict(megapixels=8.2944), (2160, 3840)),
])
def test_target_sizes(in_hw, mode, kwargs, expected):
    assert target_size(in_hw, mode, **kwargs) == expected


def test_fit_inside_never_leaves_the_box():
    for h in range(1, 60):
        for w in (1, 7, 33, 59):
            oh, ow = target_size((h, w), "fit inside", width=97, height=61)
            assert oh <= 61 and ow <= 97 and (oh == 61 or ow == 97)


def test_every_mode_is_listed_and_unknown_ones_are_refused():
    assert set(SIZE_MODES) == {"fit inside", "exact", "longest side", "megapixels"}
    with pytest.raises(InvalidInputError, match="mode must be one of"):
        target_size((10, 10), "double it")


@pytest.mark.parametrize("mode, kwargs", [
    ("exact", dict(width=0, height=100)),
    ("fit inside", dict(width=100, height=-1)),
    ("longest side", dict(longest_side=0)),
    ("megapixels", dict(megapixels=float("nan"))),
])
def test_non_positive_targets_are_refused(mode, kwargs):
    with pytest.raises(InvalidInputError, match="must be a positive number"):
        target_size((10, 10), mode, **kwargs)
