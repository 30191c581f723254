"""Project hygiene that users and ComfyUI-Manager rely on."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from conftest import REPO


def _names(requirements: list[str]) -> list[str]:
    return sorted(re.split(r"[<>=!~ ;\[]", r.strip(), maxsplit=1)[0].lower().replace("_", "-")
                  for r in requirements if r.strip() and not r.strip().startswith("#"))


def test_requirements_match_pyproject_and_never_pin_torch():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = pyproject["project"]["dependencies"]
    listed = (REPO / "requirements.txt").read_text().splitlines()
    assert _names(declared) == _names(listed)
    assert sorted(d.replace(" ", "") for d in declared) == sorted(
        r.replace(" ", "") for r in listed if r.strip() and not r.startswith("#"))
    assert "torch" not in _names(declared)  # ComfyUI owns torch; pip must never replace it


def test_core_never_imports_comfyui():
    pattern = re.compile(r"^\s*(import|from)\s+(comfy|comfy_api|folder_paths|server|nodes)\b", re.M)
    offenders = [str(p) for p in (REPO / "gsasr").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_importing_does_no_work():
    """No download, no compilation, no CUDA initialisation, no heavy submodule at import time."""
    code = ("import sys, gsasr, gsasr.cli, gsasr.render;"
            "bad = [m for m in ('huggingface_hub', 'safetensors', 'PIL', 'gsasr.archs.encoder_hat') if m in sys.modules];"
            "import torch; assert not torch.cuda.is_initialized(); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_comfy_registry_metadata():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    comfy = pyproject["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]{0,98}", pyproject["project"]["name"])  # the registry's node id rule
    assert re.fullmatch(r"\d+\.\d+\.\d+", pyproject["project"]["version"])


def test_the_pack_root_outside_comfyui_offers_no_nodes_and_does_no_work():
    """Something other than ComfyUI (pytest collecting the root) may import the root __init__.py."""
    code = ("import importlib.util, sys;"
            "spec = importlib.util.spec_from_file_location('pack', 'ComfyUI-GSASR/__init__.py'.split('/')[1],"
            " submodule_search_locations=['.']);"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
            "print(m.NODE_CLASS_MAPPINGS, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{} False"
