"""The environment header every benchmark prints first, so runs can be compared (bench/ and bench-paper)."""
from __future__ import annotations

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
