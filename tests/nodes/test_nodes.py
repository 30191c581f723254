"""The ComfyUI nodes on generated weights, against stand-in ComfyUI modules (see conftest.py)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_checkpoint, write_official_folder

from gsasr.loading import save_single_file

NODE_IDS = ("LoadGSASRModel", "GSASRUpscale", "GSASRUpscaleToSize")


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


# ------------------------------------------------------------------ registration and node definitions

def test_the_pack_registers_its_nodes_and_the_models_folder(pack, comfy):
    assert tuple(pack.NODE_CLASS_MAPPINGS) == NODE_IDS
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_IDS)
    assert comfy.folder_names_and_paths["gsasr"][0][0] == str(_gsasr_dir(comfy))


def test_a_models_folder_from_extra_model_paths_is_kept_and_searched(comfy, load_pack, tmp_path):
    other = tmp_path / "elsewhere"
    comfy.folder_names_and_paths["gsasr"] = ([str(other)], set())  # what extra_model_paths.yaml adds first
    write_official_folder(other / "mine")
    pack = load_pack()
    paths = comfy.folder_names_and_paths["gsasr"][0]
    assert paths == [str(_gsasr_dir(comfy)), str(other)]  # ours first (downloads go there), the yaml's kept
    assert "mine" in pack.NODE_CLASS_MAPPINGS["LoadGSASRModel"].INPUT_TYPES()["required"]["model_name"][0]


def test_every_input_has_a_tooltip_and_nodes_are_in_image_upscaling(pack):
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY == "image/upscaling"
        assert cls.DESCRIPTION and len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
        for name, spec in cls.INPUT_TYPES()["required"].items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_scale_widget_spans_just_above_one_to_thirty(pack):
    scale = pack.NODE_CLASS_MAPPINGS["GSASRUpscale"].INPUT_TYPES()["required"]["scale"][1]
    assert (scale["min"], scale["max"], scale["step"]) == (1.01, 30.0, 0.01)
    amp = pack.NODE_CLASS_MAPPINGS["GSASRUpscale"].INPUT_TYPES()["required"]["amp"]
    assert amp[0] == ("auto", "off", "bf16", "fp16") and amp[1]["default"] == "auto"


# ------------------------------------------------------------------ the loader

def test_model_list_has_the_releases_then_local_models(pack, comfy):
    root = _gsasr_dir(comfy)
    write_official_folder(root / "a_folder")
    write_official_folder(root / "nested" / "deeper")
    write_official_folder(root / "EDSR_DF2K")                    # a downloaded release: listed once
    write_official_folder(root / ".cache" / "huggingface" / "x")  # the download cache: never listed
    save_single_file(tiny_checkpoint(), root / "converted.safetensors")
    (root / "notes.txt").write_text("not a model")
    names = pack.NODE_CLASS_MAPPINGS["LoadGSASRModel"].INPUT_TYPES()["required"]["model_name"][0]
    releases = ["EDSR_paper", "RDN_paper", "SWIN_paper", "EDSR_DIV2K", "EDSR_DF2K", "RDN_DIV2K", "RDN_DF2K",
                "SWIN_DIV2K", "SWIN_DF2K", "HATL_SA1B"]
    assert names == releases + ["a_folder", "converted.safetensors", "nested/deeper"]


def test_linked_model_folders_are_followed_and_a_link_loop_ends(pack, comfy, tmp_path):
    root = _gsasr_dir(comfy)
    write_official_folder(tmp_path / "elsewhere" / "kept_outside")
    root.mkdir(parents=True, exist_ok=True)
    (root / "linked").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "loop").symlink_to(root)
    names = pack.NODE_CLASS_MAPPINGS["LoadGSASRModel"].INPUT_TYPES()["required"]["model_name"][0]
    assert "linked/kept_outside" in names


def test_loads_a_local_folder_and_a_converted_file(pack, comfy, run_node, tiny):
    save_single_file(tiny_checkpoint(), _gsasr_dir(comfy) / "one.safetensors")
    (folder_model,) = run_node("LoadGSASRModel", model_name=tiny)
    (file_model,) = run_node("LoadGSASRModel", model_name="one.safetensors")
    assert folder_model.info.architecture == file_model.info.architecture == "EDSR+enhanced"
    for a, b in zip(folder_model.state_dict().values(), file_model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_model_is_loaded_once_and_again_when_its_files_change(pack, comfy, run_node, tiny):
    loader = pack.NODE_CLASS_MAPPINGS["LoadGSASRModel"]
    first = run_node("LoadGSASRModel", model_name=tiny)[0]
    before = loader.IS_CHANGED(model_name=tiny)
    assert run_node("LoadGSASRModel", model_name=tiny)[0] is first
    encoder = _gsasr_dir(comfy) / tiny / "encoder.pth"
    later = time.time() + 5
    os.utime(encoder, (later, later))
    assert loader.IS_CHANGED(model_name=tiny) != before
    assert run_node("LoadGSASRModel", model_name=tiny)[0] is not first


def test_a_downloaded_release_loads_by_name_as_that_release(pack, comfy, run_node):
    write_official_folder(_gsasr_dir(comfy) / "EDSR_DF2K")
    (model,) = run_node("LoadGSASRModel", model_name="EDSR_DF2K")
    assert model.info.release == "EDSR_DF2K"
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


def test_upscale_follows_comfyui_image_conventions_and_equals_the_core(run_node, model):
    image = _image(b=2, h=10, w=13)
    (out,) = run_node("GSASRUpscale", gsasr_model=model, image=image, scale=2.5, tile_size=0, amp="auto")
    assert out.shape == (2, 25, 32, 3) and out.dtype == torch.float32 and out.is_contiguous()
    expected = model.upscale(image.permute(0, 3, 1, 2), 2.5).permute(0, 2, 3, 1)
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


def test_cancel_stops_inside_a_tile_and_puts_the_model_back(run_node, model, comfy):
    comfy.cancel_after_checks = 3  # a few layers into the first (and only) tile
    with pytest.raises(BaseException) as err:
        run_node("GSASRUpscale", gsasr_model=model, image=_image(h=24, w=24), scale=2.0, tile_size=0, amp="off")
    assert type(err.value).__name__ == "InterruptProcessingException"
    assert comfy.progress == []  # not even one tile was finished
    assert model.device.type == "cpu"


def test_out_of_memory_is_retried_with_smaller_tiles(run_node, model, monkeypatch):
    calls = []
    real = type(model)._networks

    def networks_failing_on_big_tiles(self, x, scale, amp):
        calls.append(tuple(x.shape[-2:]))
        if len(calls) == 1:  # the first, untiled attempt
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory")
        return real(self, x, scale, amp)

    monkeypatch.setattr(type(model), "_networks", networks_failing_on_big_tiles)
    (out,) = run_node("GSASRUpscale", gsasr_model=model, image=_image(h=48, w=48), scale=2.0, tile_size=0,
                      amp="off")
    assert out.shape == (1, 96, 96, 3)
    assert calls[0] == (48, 48) and len(calls) > 2  # then in tiles


def test_bad_inputs_are_clear_errors(run_node, model, core):
    with pytest.raises(core.InvalidInputError, match="scale"):
        run_node("GSASRUpscale", gsasr_model=model, image=_image(), scale=0.5, tile_size=0, amp="off")
    with pytest.raises(core.InvalidInputError, match="channels"):
        run_node("GSASRUpscale", gsasr_model=model, image=_image(c=2), scale=2.0, tile_size=0, amp="off")


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
