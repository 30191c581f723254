"""Every benchmark in bench/ still runs end to end on the smallest workload and ends with its RESULT line.

Benchmarks are not timed here (machines are noisy); this only keeps them from rotting when the code they drive
changes (a renamed knob, a moved function), which nothing else would notice.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SMOKE_RUNS = {
    "bench_pipeline.py": ["--archs", "EDSR", "--size", "12", "--scale", "2", "--rate-seconds", "0.5", "--control"],
    "bench_render.py": ["--sizes", "8x2", "--repeat", "1"],
    "amp_report.py": ["--archs", "EDSR", "--modes", "bf16", "--device", "cpu"],
    "tile_memory.py": ["--sizes", "24", "36", "--chunked-sizes", "24", "36", "--self-blocks", "1"],
}


def test_every_benchmark_has_a_smoke_run():
    assert sorted(SMOKE_RUNS) == sorted(p.name for p in (REPO / "bench").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", sorted(SMOKE_RUNS))
def test_benchmark_runs_and_reports(script):
    done = subprocess.run([sys.executable, str(REPO / "bench" / script), *SMOKE_RUNS[script]], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("# ") and lines[-1].startswith("RESULT "), done.stdout[-3000:]
