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
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_visible_model
from tolerances import UPSCALE_MODEL_VS_NODE_MIN_PSNR_DB

sys.path.insert(0, str(Path(__file__).resolve().parent))  # comfy_server.py beside this file
from comfy_server import ComfyServer, comfy_environment  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPT = Path(os.environ.get("COMFY_E2E_SCRIPT", REPO.parent / "shared" / "comfy" / "run_comfy_e2e.sh"))
CONFIGURED = bool(os.environ.get("COMFY_GIT_DIR") or os.environ.get("COMFY_DIR"))
SD15_NAME = "v1-5-pruned-emaonly-fp16.safetensors"
PACK_NODES = ("LoadGSASRModel", "GSASRUpscale", "GSASRUpscaleToSize", "GSASRUpscaleModel")

pytestmark = [
    pytest.mark.skipif(not CONFIGURED, reason="no ComfyUI configured (set COMFY_GIT_DIR or COMFY_DIR)"),
    pytest.mark.skipif(not SCRIPT.is_file(), reason=f"no ComfyUI harness at {SCRIPT} (set COMFY_E2E_SCRIPT)"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Models folder (a generated model under the released name the workflows use), its yaml, an input image."""
    root = tmp_path_factory.mktemp("comfy_e2e")
    write_visible_model(root / "models" / "gsasr" / "EDSR_DF2K")
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
               "COMFY_EXPECT_NODES": ",".join(PACK_NODES), **env}
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
    assert summary["pack_nodes"] == sorted(PACK_NODES)
    assert len(summary["workflow_templates"]) >= 3  # the template browser lists workflows/


def test_gsasr_as_upscale_model_workflow(setup):
    summary = run_comfy(setup, REPO / "workflows" / "GSASR_as_upscale_model.json", "as_upscale_model")
    assert _output_sizes(summary) == [[1920, 1920]]  # round(2.5 * 768), through ImageUpscaleWithModel's tiles


def test_gsasr_vs_plain_resize_workflow(setup):
    summary = run_comfy(setup, REPO / "workflows" / "GSASR_vs_plain_resize.json", "vs")
    assert _output_sizes(summary) == [[1024 + 16 + 1024, 1024]]  # two x4 crops of 256, 16 px apart


def _sd15_checkpoint(setup: dict) -> Path:
    """An SD 1.5 checkpoint in the models folder: ``COMFY_SD15_CHECKPOINT``, else a random one (written once)."""
    target = setup["root"] / "models" / "checkpoints" / SD15_NAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    given = os.environ.get("COMFY_SD15_CHECKPOINT")
    if given:
        os.symlink(given, target)
    else:
        comfy_dir, python = comfy_environment(SCRIPT.parent / "setup_comfy_env.sh")
        subprocess.run([str(python), str(HERE / "random_sd15_checkpoint.py"), "--comfy", str(comfy_dir),
                        str(target)], check=True, timeout=1800)
    return target


def test_text_to_image_4k_workflow(setup):
    _sd15_checkpoint(setup)
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


# ------------------------------------------------------------------ one server: upscale model, video, model manager

COMMON_ALIASES = {"super resolution", "upscale", "arbitrary scale", "enlarge", "4K"}
LOADED = "Requested to load GSASRNetworks"      # ComfyUI's log line when load_models_gpu loads our patcher
UNLOADED = "Unloading GSASRNetworks"           # its debug line when free_memory unloads it
RUNS: list[dict] = []                          # every prompt's sizes, time and memory, printed for the record


def _record(check: str, result: dict, **sizes) -> None:
    RUNS.append({"check": check, "seconds": result["seconds"], "server_peak_rss_mb": result["peak_rss_mb"], **sizes})
    print(f"\n[real ComfyUI] {json.dumps(RUNS[-1])}")


@pytest.fixture(scope="module")
def server(setup):
    """One headless ComfyUI (debug log, for the model manager's lines) with this pack and the generated model."""
    with ComfyServer(SCRIPT.parent / "setup_comfy_env.sh", [REPO], setup["root"] / "server",
                     model_paths=setup["yaml"]) as running:
        print(f"\n[real ComfyUI] server started in {running.startup_s:.1f} s")
        yield running


def test_nodes_and_search_aliases_are_served(server):
    info = server.get("/object_info")
    for node_id in PACK_NODES:
        assert info[node_id]["python_module"] == f"custom_nodes.{REPO.name}", node_id
        assert COMMON_ALIASES <= set(info[node_id]["search_aliases"]), node_id
    assert info["GSASRUpscaleModel"]["output"] == ["UPSCALE_MODEL"]
    assert info["LoadGSASRModel"]["output"] == ["GSASR_MODEL"]
    assert "IMPORT FAILED" not in server.log()


def _save_test_image(server, name: str, size: tuple[int, int]) -> None:
    from PIL import Image

    Image.effect_mandelbrot(size, (-2.0, -1.2, 1.0, 1.2), 100).convert("RGB").save(server.dirs["input"] / name)


def _load_rgb(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def test_gsasr_as_upscale_model_through_image_upscale_with_model(server):
    import numpy as np

    width, height, scale = 619, 211, 2.5  # 2.5 x 619 = 1547.5: round and floor differ on both sides; 2 tiles
    _save_test_image(server, "odd_size.png", (width, height))
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "odd_size.png"}},
        "2": {"class_type": "LoadGSASRModel", "inputs": {"model_name": "EDSR_DF2K"}},
        "3": {"class_type": "GSASRUpscaleModel", "inputs": {"gsasr_model": ["2", 0], "scale": scale, "amp": "off"}},
        "4": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["3", 0], "image": ["1", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "via_upscale_model"}},
        "6": {"class_type": "GSASRUpscale", "inputs": {"gsasr_model": ["2", 0], "image": ["1", 0], "scale": scale,
                                                       "tile_size": 0, "amp": "off"}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "via_gsasr_node"}},
    }
    result = server.run(prompt)
    (via_model,) = [_load_rgb(p) for p in server.output_files(result["outputs"], "5")]
    (via_node,) = [_load_rgb(p) for p in server.output_files(result["outputs"], "7")]
    assert via_model.shape[:2] == (round(scale * height), round(scale * width)) == (528, 1548)
    assert via_node.shape[:2] == (527, 1547)  # our own node: floor, like the core

    def psnr(a, b) -> float:
        return float(-10 * np.log10(np.mean((a - b) ** 2)))

    close = psnr(via_model[:527, :1547], via_node)
    shifted = psnr(via_node[:, 1:], via_node[:, :-1])  # what one pixel of misplacement costs on this output
    _record("GSASRUpscaleModel x2.5 via ImageUpscaleWithModel + GSASRUpscale x2.5", result,
            input=[width, height], outputs=[[1548, 528], [1547, 527]], psnr_db=round(close, 1),
            one_pixel_shift_psnr_db=round(shifted, 1))
    assert np.ptp(via_node) > 0.5  # the test model's output has structure to compare
    assert close >= UPSCALE_MODEL_VS_NODE_MIN_PSNR_DB > shifted


def test_video_workflow_keeps_every_frame_at_the_asked_size(server):
    _, python = comfy_environment(SCRIPT.parent / "setup_comfy_env.sh")
    clip = server.dirs["input"] / "clip.mp4"  # the file name the shipped workflow loads
    subprocess.run([str(python), str(HERE / "video_clip.py"), "make", str(clip), "--frames", "8", "--size", "96x54",
                    "--fps", "12"], check=True)
    source = json.loads(subprocess.run([str(python), str(HERE / "video_clip.py"), "probe", str(clip)],
                                       check=True, capture_output=True, text=True).stdout)
    twin = json.loads((HERE / "api" / "GSASR_video_to_1080p.api.json").read_text())
    result = server.run({k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in twin.items()})
    save = next(k for k, v in twin.items() if v["class_type"] == "SaveVideo")
    (video,) = server.output_files(result["outputs"], save)
    saved = json.loads(subprocess.run([str(python), str(HERE / "video_clip.py"), "probe", str(video)],
                                      check=True, capture_output=True, text=True).stdout)
    _record("video workflow 8 frames 96x54 -> 1920x1080", result, frames=saved["frames"], fps=saved["fps"],
            audio_seconds=saved["audio_seconds"])
    assert saved["frames"] == source["frames"] == 8
    assert saved["sizes"] == [[1920, 1080]] * 8
    assert saved["fps"] == source["fps"] == 12
    assert saved["audio"] and abs(saved["audio_seconds"] - source["audio_seconds"]) < 1 / source["fps"]


def test_after_a_run_the_model_stays_loaded_and_free_unloads_it(server):
    _save_test_image(server, "small.png", (96, 64))

    def upscale(scale: float) -> dict:  # a new scale each time, so ComfyUI's cache does not skip the run
        return server.run({
            "1": {"class_type": "LoadImage", "inputs": {"image": "small.png"}},
            "2": {"class_type": "LoadGSASRModel", "inputs": {"model_name": "EDSR_DF2K"}},
            "3": {"class_type": "GSASRUpscale", "inputs": {"gsasr_model": ["2", 0], "image": ["1", 0], "scale": scale,
                                                           "tile_size": 0, "amp": "off"}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "small"}},
        })

    _record("GSASRUpscale x1.5 96x64", upscale(1.5), outputs=[[144, 96]])
    loads = server.log().count(LOADED)
    assert loads >= 1 and "model=GSASRNetworks" in server.log()  # load_models_gpu loaded our patcher
    _record("GSASRUpscale x1.6 96x64", upscale(1.6), outputs=[[153, 102]])
    assert server.log().count(LOADED) == loads  # still among ComfyUI's loaded models: not loaded again
    assert UNLOADED not in server.log()
    server.free()  # the "Unload models" button
    assert server.wait_for_log(UNLOADED), server.log()[-3000:]
    _record("GSASRUpscale x1.7 96x64 after /free", upscale(1.7), outputs=[[163, 108]])
    assert server.log().count(LOADED) == loads + 1  # unloaded by /free, so loaded again


USDU_GIT_DIR = os.environ.get("COMFY_USDU_GIT_DIR", "")                # git dir of ssitu/ComfyUI_UltimateSDUpscale
USDU_SCRIPT_GIT_DIR = os.environ.get("COMFY_USDU_SCRIPT_GIT_DIR", "")  # ... of its submodule, Coyote-A's script


def _checkout_usdu(target: Path) -> Path:
    """UltimateSDUpscale as ComfyUI-Manager installs it (its repository with its submodule), from local git dirs."""
    def export(git_dir: str, ref: str, into: Path) -> None:
        into.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", f"--git-dir={git_dir}", "archive", ref], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)

    export(USDU_GIT_DIR, "HEAD", target)
    submodule = subprocess.run(["git", f"--git-dir={USDU_GIT_DIR}", "rev-parse",
                                "HEAD:repositories/ultimate_sd_upscale"],
                               check=True, capture_output=True, text=True).stdout.strip()
    export(USDU_SCRIPT_GIT_DIR, submodule, target / "repositories" / "ultimate_sd_upscale")
    return target


@pytest.mark.skipif(not (USDU_GIT_DIR and USDU_SCRIPT_GIT_DIR),
                    reason="UltimateSDUpscale not configured (set COMFY_USDU_GIT_DIR and COMFY_USDU_SCRIPT_GIT_DIR)")
def test_gsasr_as_upscale_model_in_ultimate_sd_upscale(setup):
    """UltimateSDUpscale enlarges with the UPSCALE_MODEL it is given (through ImageUpscaleWithModel), then redraws
    tiles with SD 1.5: one 160 x 160 tile, 1 step of a random checkpoint, so the CPU run stays short."""
    _sd15_checkpoint(setup)
    usdu = _checkout_usdu(setup["root"] / "ComfyUI_UltimateSDUpscale")
    with ComfyServer(SCRIPT.parent / "setup_comfy_env.sh", [REPO, usdu], setup["root"] / "usdu_server",
                     model_paths=setup["yaml"], port=8191) as server:  # 8190: the module's server may still run
        _save_test_image(server, "tiny.png", (64, 64))
        usdu_inputs = {
            "image": ["4", 0], "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2],
            "upscale_by": 2.5, "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 0.2, "upscale_model": ["6", 0], "mode_type": "Linear", "tile_width": 160, "tile_height": 160,
            "mask_blur": 8, "tile_padding": 32, "seam_fix_mode": "None", "seam_fix_denoise": 1.0,
            "seam_fix_width": 64, "seam_fix_mask_blur": 8, "seam_fix_padding": 16, "force_uniform_tiles": False,
            "tiled_decode": False, "batch_size": 1}
        result = server.run({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15_NAME}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["1", 1]}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
            "4": {"class_type": "LoadImage", "inputs": {"image": "tiny.png"}},
            "5": {"class_type": "LoadGSASRModel", "inputs": {"model_name": "EDSR_DF2K"}},
            "6": {"class_type": "GSASRUpscaleModel", "inputs": {"gsasr_model": ["5", 0], "scale": 2.5,
                                                                "amp": "off"}},
            "7": {"class_type": "UltimateSDUpscale", "inputs": usdu_inputs},
            "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "usdu"}},
        })
        (image,) = [_load_rgb(p) for p in server.output_files(result["outputs"], "8")]
        _record("UltimateSDUpscale x2.5 with GSASR as Upscale Model, 64x64, 1 step", result,
                outputs=[list(image.shape[1::-1])])
        assert image.shape[:2] == (160, 160)
        # USDU silences logging while it works, so ComfyUI's "Requested to load" line is not there; that our model
        # was among the loaded models after the run shows when /free unloads it.
        assert UNLOADED not in server.log()
        server.free()
        assert server.wait_for_log(UNLOADED), server.log()[-3000:]
