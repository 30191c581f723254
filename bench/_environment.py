"""The environment header every benchmark prints first (shared with ``python -m gsasr bench-paper``)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gsasr.environment import environment_header  # noqa: E402,F401
