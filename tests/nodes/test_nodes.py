"""The ComfyUI nodes on generated weights, against stand-in ComfyUI modules (see conftest.py)."""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from comfy_standins import ModelPatcher, node_classes_of
from conftest import tiny_checkpoint, write_official_folder, write_visible_model

from gsasr.loading import save_single_file

NODE_IDS = ("LoadGSASRModel", "GSASRUpscale", "GSASRUpscaleToSize", "GSASRUpscaleModel")
COMMON_ALIASES = {"super resolution", "upscale", "arbitrary scale", "enlarge", "4K"}


def _gsasr_dir(comfy) -> Path:
    return comfy.models_dir / "gsasr"


@pytest.fixture
def tiny(comfy) -> str:
    """A generated model in models/gsasr/tiny (the official two-file layout); returns its list name."""
    write_official_folder(_gsasr_dir(comfy) / "tiny")
    return "tiny"


def _image(b=1, h=10, w=13, c=3, dtype=torch.float32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, c, generator=g).to(dtype)


def _input_spec(node_classes, node_id: str, name: str) -> tuple[str, dict]:
    """An input as /object_info lists it: (type, options)."""
    inputs = node_classes[node_id].GET_NODE_INFO_V1()["input"]
    return next(group[name] for group in inputs.values() if name in group)


def _model_names(node_classes) -> list[str]:
    return _input_spec(node_classes, "LoadGSASRModel", "model_name")[1]["options"]


# ------------------------------------------------------------------ registration and node definitions

def test_the_pack_is_a_v3_extension_and_registers_the_models_folder(pack, comfy, node_classes):
    # NODE_CLASS_MAPPINGS would win over comfy_entrypoint in ComfyUI v0.33: the pack must not export them.
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS") and callable(pack.comfy_entrypoint)
    assert tuple(node_classes) == NODE_IDS
    assert comfy.folder_names_and_paths["gsasr"][0][0] == str(_gsasr_dir(comfy))


def test_on_a_comfyui_without_the_v3_api_one_log_line_says_which_version_is_needed(comfy, load_pack, monkeypatch,
                                                                                 caplog):
    for name in ("comfy_api", "comfy_api.latest"):
        monkeypatch.setitem(sys.modules, name, None)  # `import comfy_api...` now raises ImportError
    with caplog.at_level(logging.INFO):
        pack = load_pack()
    assert pack.NODE_CLASS_MAPPINGS == {} and not hasattr(pack, "comfy_entrypoint")
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert "ComfyUI 0.11.0 or newer" in caplog.records[0].getMessage()


def test_a_models_folder_from_extra_model_paths_is_kept_and_searched(comfy, load_pack, tmp_path):
    other = tmp_path / "elsewhere"
    comfy.folder_names_and_paths["gsasr"] = ([str(other)], set())  # what extra_model_paths.yaml adds first
    write_official_folder(other / "mine")
    pack = load_pack()
    paths = comfy.folder_names_and_paths["gsasr"][0]
    assert paths == [str(_gsasr_dir(comfy)), str(other)]  # ours first (downloads go there), the yaml's kept
    assert "mine" in _model_names(node_classes_of(pack))


def test_every_node_is_described_has_tooltips_and_answers_to_the_search_aliases(node_classes):
    for node_id, cls in node_classes.items():
        info = cls.GET_NODE_INFO_V1()
        assert info["name"] == node_id and info["display_name"] and info["description"]
        assert info["category"] == "image/upscaling"
        assert all(info["output_tooltips"]), f"{node_id} has an output without a tooltip"
        for name, (_, options) in info["input"]["required"].items():
            assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert COMMON_ALIASES <= set(info["search_aliases"]), node_id


def test_inputs_outputs_and_defaults_are_those_saved_workflows_use(node_classes):
    def defaults(node_id):
        info = node_classes[node_id].GET_NODE_INFO_V1()
        return info["input_order"]["required"], {k: v[1].get("default") for k, v in info["input"]["required"].items()}

    tail = {"tile_size": 0, "amp": "auto"}
    assert defaults("LoadGSASRModel") == (["model_name"], {"model_name": "EDSR_DF2K"})
    assert defaults("GSASRUpscale") == (["gsasr_model", "image", "scale", "tile_size", "amp"],
                                        {"gsasr_model": None, "image": None, "scale": 4.0, **tail})
    assert defaults("GSASRUpscaleToSize") == (
        ["gsasr_model", "image", "mode", "width", "height", "longest_side", "megapixels", "tile_size", "amp"],
        {"gsasr_model": None, "image": None, "mode": "fit inside", "width": 3840, "height": 2160,
         "longest_side": 3840, "megapixels": 8.3, **tail})
    assert defaults("GSASRUpscaleModel") == (["gsasr_model", "scale", "amp"],
                                             {"gsasr_model": None, "scale": 4.0, "amp": "auto"})
    outputs = {k: (c.GET_NODE_INFO_V1()["output"], c.GET_NODE_INFO_V1()["output_name"])
               for k, c in node_classes.items()}
    assert outputs == {"LoadGSASRModel": (["GSASR_MODEL"], ["gsasr_model"]),
                       "GSASRUpscale": (["IMAGE"], ["IMAGE"]),
                       "GSASRUpscaleToSize": (["IMAGE", "INT", "INT"], ["image", "width", "height"]),
                       "GSASRUpscaleModel": (["UPSCALE_MODEL"], ["upscale_model"])}


def test_scale_widget_spans_just_above_one_to_thirty_and_amp_says_what_auto_does(node_classes):
    for node_id in ("GSASRUpscale", "GSASRUpscaleModel"):
        scale = _input_spec(node_classes, node_id, "scale")[1]
        assert (scale["min"], scale["max"], scale["step"]) == (1.01, 30.0, 0.01)
        kind, amp = _input_spec(node_classes, node_id, "amp")
        assert kind == "COMBO" and amp["options"] == ["auto", "off", "bf16", "fp16"] and amp["default"] == "auto"
        assert ("auto = bf16 on recent NVIDIA GPUs and on CPUs with native bf16 (AMX or AVX512-BF16), fp16 on "
                "older NVIDIA GPUs and Apple, off on other CPUs") in amp["tooltip"]


# ------------------------------------------------------------------ the loader

def test_model_list_has_the_releases_then_local_models(pack, comfy):
    root = _gsasr_dir(comfy)
    write_official_folder(root / "a_folder")
    write_official_folder(root / "nested" / "deeper")
    write_official_folder(root / "EDSR_DF2K")                    # a downloaded release: listed once
    write_official_folder(root / ".cache" / "huggingface" / "x")  # the download cache: never listed
    save_single_file(tiny_checkpoint(), root / "converted.safetensors")
    (root / "notes.txt").write_text("not a model")
    names = _model_names(node_classes_of(pack))
    releases = ["EDSR_paper", "RDN_paper", "SWIN_paper", "EDSR_DIV2K", "EDSR_DF2K", "RDN_DIV2K", "RDN_DF2K",
                "SWIN_DIV2K", "SWIN_DF2K", "HATL_SA1B"]
    assert names == releases + ["a_folder", "converted.safetensors", "nested/deeper"]


def test_linked_model_folders_are_followed_and_a_link_loop_ends(pack, comfy, tmp_path):
    root = _gsasr_dir(comfy)
    write_official_folder(tmp_path / "elsewhere" / "kept_outside")
    root.mkdir(parents=True, exist_ok=True)
    (root / "linked").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "loop").symlink_to(root)
    names = _model_names(node_classes_of(pack))
    assert "linked/kept_outside" in names


def test_loads_a_local_folder_and_a_converted_file(pack, comfy, run_node, tiny):
    save_single_file(tiny_checkpoint(), _gsasr_dir(comfy) / "one.safetensors")
    (folder_model,) = run_node("LoadGSASRModel", model_name=tiny)
    (file_model,) = run_node("LoadGSASRModel", model_name="one.safetensors")
    assert folder_model.model.info.architecture == file_model.model.info.architecture == "EDSR+enhanced"
    pairs = zip(folder_model.model.state_dict().values(), file_model.model.state_dict().values(), strict=True)
    for a, b in pairs:
        assert torch.equal(a, b)


def test_a_model_is_loaded_once_and_again_when_its_files_change(pack, comfy, run_node, tiny):
    loader = node_classes_of(pack)["LoadGSASRModel"]
    first = run_node("LoadGSASRModel", model_name=tiny)[0]
    before = loader.fingerprint_inputs(model_name=tiny)
    assert run_node("LoadGSASRModel", model_name=tiny)[0] is first
    encoder = _gsasr_dir(comfy) / tiny / "encoder.pth"
    later = time.time() + 5
    os.utime(encoder, (later, later))
    assert loader.fingerprint_inputs(model_name=tiny) != before
    assert run_node("LoadGSASRModel", model_name=tiny)[0] is not first


def test_a_downloaded_release_loads_by_name_as_that_release(pack, comfy, run_node):
    write_official_folder(_gsasr_dir(comfy) / "EDSR_DF2K")
    (model,) = run_node("LoadGSASRModel", model_name="EDSR_DF2K")
    assert model.model.info.release == "EDSR_DF2K"
    assert run_node("LoadGSASRModel", model_name="EDSR_DF2K")[0] is model  # cached under the same fingerprint


def test_a_release_in_the_wrong_folder_is_refused(pack, comfy, run_node, core):
    write_official_folder(_gsasr_dir(comfy) / "HATL_SA1B")  # EDSR weights under the HAT name
    with pytest.raises(core.CheckpointError, match="HAT"):
        run_node("LoadGSASRModel", model_name="HATL_SA1B")


def test_offline_the_loader_says_which_files_go_where(pack, comfy, run_node, core, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(core.ModelNotFoundError) as err:
        run_node("LoadGSASRModel", model_name="SWIN_DF2K")
    message = str(err.value)
    assert str(_gsasr_dir(comfy) / "SWIN_DF2K") in message and "encoder.pth" in message
    assert "decoder.pth" in message and "huggingface.co/mutou0308/GSASR" in message


def test_a_vanished_local_model_is_a_clear_error(pack, comfy, run_node, core):
    with pytest.raises(core.ModelNotFoundError, match="moved or deleted"):
        run_node("LoadGSASRModel", model_name="gone_model")


def test_download_progress_drives_one_bar_per_file(pack, comfy):
    progress = pack.nodes.glue.DownloadProgress()
    for done, total in ((0, 100), (50, 100), (100, 100), (0, 40), (40, 40)):
        progress(done, total)
    assert comfy.progress == [(0, 100), (50, 100), (100, 100), (0, 40), (40, 40)]


# ------------------------------------------------------------------ upscaling

@pytest.fixture
def model(run_node, tiny):
    return run_node("LoadGSASRModel", model_name=tiny)[0]


def test_upscale_follows_comfyui_image_conventions_and_equals_the_core(run_node, comfy):
    write_visible_model(_gsasr_dir(comfy) / "visible")  # an output with structure, so equality means something
    (model,) = run_node("LoadGSASRModel", model_name="visible")
    image = _image(b=2, h=10, w=13)
    (out,) = run_node("GSASRUpscale", gsasr_model=model, image=image, scale=2.5, tile_size=0, amp="auto")
    assert out.shape == (2, 25, 32, 3) and out.dtype == torch.float32 and out.is_contiguous()
    expected = model.model.upscale(image.permute(0, 3, 1, 2), 2.5, amp="auto").permute(0, 2, 3, 1)
    assert out.std() > 0.05
    assert torch.equal(out, expected)


@pytest.mark.parametrize("channels", [1, 4])
def test_greyscale_and_alpha_keep_their_channels(run_node, model, channels):
    image = _image(h=9, w=11, c=channels)
    (out,) = run_node("GSASRUpscale", gsasr_model=model, image=image, scale=3.0, tile_size=0, amp="off")
    assert out.shape == (1, 27, 33, channels)
    if channels == 4:  # alpha is resized on its own, not run through the colour model
        alpha = torch.nn.functional.interpolate(image[..., 3:].permute(0, 3, 1, 2), size=(27, 33), mode="bicubic")
        assert torch.allclose(out[..., 3], alpha.clamp(0, 1)[:, 0])


def test_float16_images_come_back_in_comfyuis_intermediate_dtype(run_node, model, comfy):
    comfy.intermediate_dtype = torch.float16
    (out,) = run_node("GSASRUpscale", gsasr_model=model, image=_image(dtype=torch.float16), scale=2.0,
                      tile_size=0, amp="off")
    assert out.dtype == torch.float16 and out.shape == (1, 20, 26, 3)


def test_progress_goes_to_the_progress_bar_per_tile(run_node, model, comfy):
    image = _image(h=40, w=40)
    run_node("GSASRUpscale", gsasr_model=model, image=image, scale=1.5, tile_size=12, amp="off")
    assert comfy.progress == [(i, 16) for i in range(1, 17)]  # 40 px padded to 48: 4 x 4 tiles of 12


def test_tiled_and_whole_agree_closely(run_node, model):
    image = _image(h=40, w=40)
    (whole,) = run_node("GSASRUpscale", gsasr_model=model, image=image, scale=2.0, tile_size=0, amp="off")
    (tiled,) = run_node("GSASRUpscale", gsasr_model=model, image=image, scale=2.0, tile_size=12, amp="off")
    assert whole.shape == tiled.shape == (1, 80, 80, 3)
    assert (whole - tiled).abs().mean() < 0.05  # only the context cut at tile borders differs


def test_cancel_stops_inside_a_tile_and_leaves_the_model_with_comfyui(run_node, model, comfy):
    comfy.cancel_after_checks = 3  # a few layers into the first (and only) tile
    with pytest.raises(BaseException) as err:
        run_node("GSASRUpscale", gsasr_model=model, image=_image(h=24, w=24), scale=2.0, tile_size=0, amp="off")
    assert type(err.value).__name__ == "InterruptProcessingException"
    assert comfy.progress == []  # not even one tile was finished
    assert comfy.loaded_models() == [model.patcher]  # ComfyUI's to keep or unload, as any model it loaded


def test_out_of_memory_is_retried_with_smaller_tiles(run_node, model, monkeypatch):
    calls = []
    real = type(model.model)._run_networks

    def networks_failing_on_big_tiles(self, x, scale):
        calls.append(tuple(x.shape[-2:]))
        if len(calls) == 1:  # the first, untiled attempt
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory")
        return real(self, x, scale)

    monkeypatch.setattr(type(model.model), "_run_networks", networks_failing_on_big_tiles)
    (out,) = run_node("GSASRUpscale", gsasr_model=model, image=_image(h=48, w=48), scale=2.0, tile_size=0,
                      amp="off")
    assert out.shape == (1, 96, 96, 3)
    assert calls[0] == (48, 48) and len(calls) > 2  # then in tiles


def test_bad_inputs_are_clear_errors(run_node, model, core):
    with pytest.raises(core.InvalidInputError, match="scale"):
        run_node("GSASRUpscale", gsasr_model=model, image=_image(), scale=0.5, tile_size=0, amp="off")
    with pytest.raises(core.InvalidInputError, match="channels"):
        run_node("GSASRUpscale", gsasr_model=model, image=_image(c=2), scale=2.0, tile_size=0, amp="off")


# ------------------------------------------------------------------ ComfyUI's model manager

def test_the_model_is_loaded_by_comfyui_with_the_tile_planners_estimate(run_node, model, comfy, pack):
    image = _image(h=40, w=52)
    run_node("GSASRUpscale", gsasr_model=model, image=image, scale=2.5, tile_size=0, amp="off")
    (call,) = comfy.load_calls
    assert call["models"] == [model.patcher] and call["force_full_load"]
    expected = pack.nodes.managed.upscale_work_bytes((40, 52), (100, 130), model.model.denominator,
                                                     model.model.bytes_per_lr_pixel(),
                                                     pack.nodes.managed.MAX_WORK_BYTES)
    assert call["memory_required"] == expected > 40 * 52 * model.model.bytes_per_lr_pixel()
    assert comfy.loaded_models() == [model.patcher]
    assert model.patcher.model.gsasr is model.model  # the patcher holds this model's weights, nothing else


def test_one_patcher_per_loaded_model_kept_with_it(run_node, tiny, comfy):
    first = run_node("LoadGSASRModel", model_name=tiny)[0]
    again = run_node("LoadGSASRModel", model_name=tiny)[0]
    assert again is first and again.patcher is first.patcher
    write_official_folder(_gsasr_dir(comfy) / "other")
    other = run_node("LoadGSASRModel", model_name="other")[0]
    assert other.patcher is not first.patcher and other.patcher.model.gsasr is other.model


def test_unload_models_unloads_it_and_the_next_run_loads_it_again(run_node, model, comfy):
    run_node("GSASRUpscale", gsasr_model=model, image=_image(), scale=2.0, tile_size=0, amp="off")
    comfy.unload_all_models()  # what POST /free {"unload_models": true} does
    assert comfy.loaded_models() == [] and model.patcher.loaded_size() == 0
    run_node("GSASRUpscale", gsasr_model=model, image=_image(), scale=2.0, tile_size=0, amp="off")
    assert comfy.loaded_models() == [model.patcher] and len(comfy.load_calls) == 2


def test_another_model_that_needs_the_memory_evicts_it_and_it_comes_back(run_node, model, comfy):
    weights = model.patcher.model_size()
    comfy.vram_bytes = weights + 3 * 2**30  # a GPU with room for our weights and our work, not for a big model
    run_node("GSASRUpscale", gsasr_model=model, image=_image(), scale=2.0, tile_size=0, amp="off")
    diffusion = ModelPatcher(torch.nn.Linear(8, 8), torch.device("cpu"), torch.device("cpu"), size=2 * 2**30)
    comfy.load_models_gpu([diffusion])
    assert comfy.loaded_models() == [diffusion] and model.patcher.loaded_size() == 0
    run_node("GSASRUpscale", gsasr_model=model, image=_image(), scale=2.0, tile_size=0, amp="off")
    assert comfy.loaded_models() == [model.patcher]  # and the big model made room in turn


# ------------------------------------------------------------------ batches (video frames)

def test_a_batch_is_upscaled_frame_by_frame_under_one_progress_bar(run_node, model, comfy, monkeypatch):
    frames = _image(b=3, h=24, w=24)
    seen = []
    real = type(model.model).upscale

    def one_call(self, image, *args, **kwargs):
        seen.append(tuple(image.shape))
        return real(self, image, *args, **kwargs)

    monkeypatch.setattr(type(model.model), "upscale", one_call)
    (out,) = run_node("GSASRUpscale", gsasr_model=model, image=frames, scale=2.0, tile_size=12, amp="off")
    assert seen == [(1, 3, 24, 24)] * 3  # the compute device holds one frame's work at a time
    assert comfy.progress == [(i, 12) for i in range(1, 13)]  # 2 x 2 tiles per frame, one bar over 3 frames
    for i in range(3):
        alone = real(model.model, frames[i:i + 1].permute(0, 3, 1, 2), 2.0, tile=12).permute(0, 2, 3, 1)
        assert torch.equal(out[i:i + 1], alone)


def test_frames_upscaled_to_a_video_size_are_all_that_size(run_node, model):
    out, width, height = run_node("GSASRUpscaleToSize", gsasr_model=model, image=_image(b=4, h=9, w=16),
                                  mode="fit inside", **{**SIZE_DEFAULTS, "width": 64, "height": 36})
    assert out.shape == (4, 36, 64, 3) and (width, height) == (64, 36)


# ------------------------------------------------------------------ GSASR as Upscale Model

@pytest.fixture
def upscale_model(run_node, model):
    return run_node("GSASRUpscaleModel", gsasr_model=model, scale=2.5, amp="off")[0]


def test_gsasr_as_upscale_model_has_what_upscale_model_consumers_use(upscale_model, model):
    assert upscale_model.scale == 2.5 and upscale_model.patcher is model.patcher
    assert upscale_model.patcher.load_device == torch.device("cpu")


@pytest.mark.parametrize("hw", [(13, 17), (32, 32), (21, 40)])
def test_gsasr_as_upscale_model_returns_tiles_of_the_rounded_size(upscale_model, model, comfy, hw):
    tiles = torch.rand(2, 3, *hw)
    comfy.load_models_gpu([model.patcher])  # as ImageUpscaleWithModel does before its tiles
    out = upscale_model(tiles)
    expected_hw = (round(2.5 * hw[0]), round(2.5 * hw[1]))  # what comfy.utils.tiled_scale allocates and places
    assert out.shape == (2, 3, *expected_hw) and out.dtype == torch.float32
    assert len(comfy.load_calls) == 1  # already loaded by the caller: not loaded again per tile
    expected = model.model.upscale(tiles, size=expected_hw)
    assert torch.equal(out, expected)


def test_gsasr_as_upscale_model_loads_itself_for_a_caller_that_did_not(upscale_model, model, comfy):
    upscale_model(torch.rand(1, 3, 12, 12))
    assert comfy.loaded_models() == [model.patcher] and comfy.load_calls[0]["models"] == [model.patcher]


def test_gsasr_as_upscale_model_refuses_a_tile_it_cannot_enlarge(run_node, model, core):
    upscaler = run_node("GSASRUpscaleModel", gsasr_model=model, scale=1.01, amp="off")[0]
    with pytest.raises(core.InvalidInputError, match="larger scale"):
        upscaler(torch.rand(1, 3, 40, 40))  # round(1.01 x 40) = 40


# ------------------------------------------------------------------ upscale to size

SIZE_DEFAULTS = dict(width=3840, height=2160, longest_side=3840, megapixels=8.3, tile_size=0, amp="off")


@pytest.mark.parametrize("mode, overrides, expected_hw", [
    ("fit inside", dict(width=64, height=40), (40, 52)),   # 10x13 input: height limits (x4)
    ("exact", dict(width=50, height=21), (21, 50)),        # stretched: each axis its own scale
    ("longest side", dict(longest_side=39), (30, 39)),
    ("megapixels", dict(megapixels=0.0052), (63, 82)),     # sqrt(5200 / 130) = 6.32x
])
def test_upscale_to_size_modes(run_node, model, mode, overrides, expected_hw):
    inputs = {**SIZE_DEFAULTS, **overrides}
    out, width, height = run_node("GSASRUpscaleToSize", gsasr_model=model, image=_image(h=10, w=13), mode=mode,
                                  **inputs)
    assert out.shape == (1, *expected_hw, 3) and (height, width) == expected_hw


def test_upscale_to_a_smaller_size_says_to_use_a_plain_resize(run_node, model, core):
    with pytest.raises(core.InvalidInputError, match="above 1"):
        run_node("GSASRUpscaleToSize", gsasr_model=model, image=_image(h=100, w=100), mode="fit inside",
                 **{**SIZE_DEFAULTS, "width": 64, "height": 64})
