"""The pack in the real ComfyUI: it imports, its nodes are served, each shipped workflow runs, Cancel interrupts.

Runs when a ComfyUI checkout is configured (``COMFY_GIT_DIR``: a git dir holding v0.33.0, or ``COMFY_DIR``: a
work tree) and the harness ``../shared/comfy/run_comfy_e2e.sh`` (or ``COMFY_E2E_SCRIPT``) exists; skipped with a
reason otherwise (CI has no ComfyUI). Each run starts ComfyUI headless on the CPU with this pack linked into
``custom_nodes``, a generated model in a ``gsasr`` models folder (extra_model_paths.yaml) and posts the shipped
UI-format workflow as the frontend would. The text-to-image workflow also needs an SD 1.5 checkpoint: the one at
``COMFY_SD15_CHECKPOINT``, else a random one written by random_sd15_checkpoint.py (about 2 GB, under a minute);
it runs as its API twin with 2 sampling steps (on a CPU each step of SD 1.5 takes most of a minute).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import write_official_folder

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPT = Path(os.environ.get("COMFY_E2E_SCRIPT", REPO.parent / "shared" / "comfy" / "run_comfy_e2e.sh"))
CONFIGURED = bool(os.environ.get("COMFY_GIT_DIR") or os.environ.get("COMFY_DIR"))
SD15_NAME = "v1-5-pruned-emaonly-fp16.safetensors"

pytestmark = [
    pytest.mark.skipif(not CONFIGURED, reason="no ComfyUI configured (set COMFY_GIT_DIR or COMFY_DIR)"),
    pytest.mark.skipif(not SCRIPT.is_file(), reason=f"no ComfyUI harness at {SCRIPT} (set COMFY_E2E_SCRIPT)"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Models folder (a generated model under the released name the workflows use), its yaml, an input image."""
    root = tmp_path_factory.mktemp("comfy_e2e")
    write_official_folder(root / "models" / "gsasr" / "EDSR_DF2K")
    yaml = root / "extra_model_paths.yaml"
    yaml.write_text(f"gsasr_e2e:\n    base_path: {root / 'models'}\n    gsasr: gsasr\n    checkpoints: checkpoints\n")
    from PIL import Image

    example = root / "input" / "example.png"  # the name ComfyUI's own input folder ships, 768 x 768
    example.parent.mkdir()
    Image.effect_mandelbrot((768, 768), (-2.0, -1.5, 1.0, 1.5), 100).convert("RGB").save(example)
    return {"root": root, "yaml": yaml, "example": example}


def run_comfy(setup: dict, workflow: Path, name: str, **env) -> dict:
    out = setup["root"] / name
    environ = {**os.environ, "COMFY_MODEL_PATHS": str(setup["yaml"]), "COMFY_INPUT_FILES": str(setup["example"]),
               "COMFY_EXPECT_NODES": "LoadGSASRModel,GSASRUpscale,GSASRUpscaleToSize", **env}
    proc = subprocess.run(["bash", str(SCRIPT), str(REPO), str(workflow), str(out)], env=environ,
                          capture_output=True, text=True, timeout=3600)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    return summary


def _output_sizes(summary: dict) -> list[list[int]]:
    return [o["size"] for o in summary["outputs"]]


def test_upscale_image_workflow(setup):
    summary = run_comfy(setup, REPO / "workflows" / "GSASR_upscale_image_x3.5.json", "x3.5")
    assert _output_sizes(summary) == [[2688, 2688]]  # floor(3.5 * 768)
    assert set(summary["pack_nodes"]) == {"LoadGSASRModel", "GSASRUpscale", "GSASRUpscaleToSize"}
    assert len(summary["workflow_templates"]) >= 3  # the template browser lists workflows/


def test_gsasr_vs_plain_resize_workflow(setup):
    summary = run_comfy(setup, REPO / "workflows" / "GSASR_vs_plain_resize.json", "vs")
    assert _output_sizes(summary) == [[1024 + 16 + 1024, 1024]]  # two x4 crops of 256, 16 px apart


def test_text_to_image_4k_workflow(setup):
    target = setup["root"] / "models" / "checkpoints" / SD15_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    given = os.environ.get("COMFY_SD15_CHECKPOINT")
    if given:
        os.symlink(given, target)
    else:
        comfy_dir, python = _comfy_dir_and_python()
        subprocess.run([python, str(HERE / "random_sd15_checkpoint.py"), "--comfy", comfy_dir, str(target)],
                       check=True, timeout=1800)
    # The API twin with 2 sampling steps instead of 20: a random SD 1.5 takes ~50 s per step on a 2-core CPU, and
    # the steps change nothing GSASR sees but the pixel values.
    twin = json.loads((HERE / "api" / "GSASR_text_to_image_4K.api.json").read_text())
    next(n for n in twin.values() if n["class_type"] == "KSampler")["inputs"]["steps"] = 2
    workflow = setup["root"] / "t2i_2_steps.api.json"
    workflow.write_text(json.dumps(twin))
    summary = run_comfy(setup, workflow, "t2i")
    assert _output_sizes(summary) == [[3840, 2160]]


def test_cancel_interrupts_a_long_upscale(setup, tmp_path):
    twin = json.loads((HERE / "api" / "GSASR_upscale_image_x3.5.api.json").read_text())
    upscale = next(n for n in twin.values() if n["class_type"] == "GSASRUpscale")
    upscale["inputs"].update(scale=12.0, tile_size=64)  # many tiles and a big render: tens of seconds on a CPU
    workflow = tmp_path / "long.api.json"
    workflow.write_text(json.dumps(twin))
    summary = run_comfy(setup, workflow, "cancel", COMFY_INTERRUPT_AFTER="6")
    assert summary["error"]["interrupted"]


def _comfy_dir_and_python() -> tuple[str, str]:
    """The ComfyUI work tree and venv the harness uses (it prints them)."""
    setup_script = SCRIPT.parent / "setup_comfy_env.sh"
    lines = subprocess.run(["bash", str(setup_script)], capture_output=True, text=True, check=True).stdout
    found = dict(line.split("=", 1) for line in lines.splitlines() if line.startswith("COMFY_"))
    python = Path(found["COMFY_VENV"]) / "bin" / "python"
    return found["COMFY_DIR"], str(python if python.exists() else shutil.which("python3"))
