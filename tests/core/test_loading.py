"""Checkpoint reading: official layout variants, our single file, architecture detection, refusal of bad files."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import load_golden, tiny_checkpoint, write_official_folder

import gsasr
from gsasr.errors import CheckpointError, UnsafeCheckpointError
from gsasr.loading import (architecture_name, build_decoder, canonical_state_dict, detect_encoder, read_any,
                           save_official_folder, save_single_file)

EXPECTED_ARCH = {"EDSR": "EDSR+paper", "RDN": "RDN+paper", "SWIN": "SwinIR+paper", "EDSR_DIV2K": "EDSR+enhanced",
                 "RDN_DIV2K": "RDN+enhanced", "SWIN_DIV2K": "SwinIR+enhanced", "HATL_SA1B": "HAT+enhanced"}


def _upscale(model, seed=1):
    torch.manual_seed(seed)
    return model.upscale(torch.rand(1, 3, 9, 7), 2.5, clamp=False)


@pytest.mark.parametrize("wrapper", ["params_ema", "params", "bare", "state_dict"])
def test_official_layout_variants_load_to_the_same_model(tmp_path: Path, wrapper: str):
    reference = gsasr.load_model(str(write_official_folder(tmp_path / "ref")))
    model = gsasr.load_model(str(write_official_folder(tmp_path / wrapper, wrapper=wrapper)))
    assert torch.equal(_upscale(model), _upscale(reference))


def test_params_ema_is_preferred_over_params():
    ema = {"w": torch.ones(1)}
    raw = {"w": torch.zeros(1)}
    assert canonical_state_dict({"params": raw, "params_ema": ema})["w"].item() == 1.0


def test_module_prefix_is_stripped(tmp_path: Path):
    ckpt = tiny_checkpoint()
    folder = tmp_path / "ddp"
    folder.mkdir()
    for part in ("encoder", "decoder"):
        sd = {f"module.{k}": v for k, v in getattr(ckpt, part).items()}
        torch.save({"params_ema": sd}, folder / f"{part}.pth")
    model = gsasr.load_model(str(folder))
    assert model.info.architecture == "EDSR+enhanced"


@pytest.mark.parametrize("form", ["paper", "enhanced"])
def test_round_trip_official_to_single_file_and_back(tmp_path: Path, form: str):
    folder = write_official_folder(tmp_path / "official", form=form)
    model = gsasr.load_model(str(folder))
    single = save_single_file(model.to_checkpoint(), tmp_path / "model.safetensors")
    from_single = gsasr.load_model(str(single))
    assert from_single.info.architecture == f"EDSR+{form}"
    assert from_single.info.metadata["format"] == "gsasr-single-file"
    back = save_official_folder(from_single.to_checkpoint(), tmp_path / "back")
    from_back = gsasr.load_model(str(back))
    expected = _upscale(model)
    assert torch.equal(_upscale(from_single), expected)
    assert torch.equal(_upscale(from_back), expected)


def test_single_file_keeps_release_metadata(tmp_path: Path):
    path = save_single_file(tiny_checkpoint(release="EDSR_DF2K"), tmp_path / "m.safetensors")
    ckpt = read_any(path)
    assert ckpt.metadata["release"] == "EDSR_DF2K"
    assert gsasr.load_model(str(path)).info.release == "EDSR_DF2K"


def test_saving_never_overwrites_unasked(tmp_path: Path):
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"user data")
    with pytest.raises(FileExistsError):
        save_single_file(tiny_checkpoint(), target)
    assert target.read_bytes() == b"user data"
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "encoder.pth").write_bytes(b"user data")
    with pytest.raises(FileExistsError):
        save_official_folder(tiny_checkpoint(), folder)
    assert (folder / "encoder.pth").read_bytes() == b"user data"


def test_mislabelled_single_file_is_refused(tmp_path: Path):
    ckpt = tiny_checkpoint()
    ckpt.metadata["architecture"] = "HAT+enhanced"
    path = save_single_file(ckpt, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="metadata says HAT"):
        gsasr.load_model(str(path))


@pytest.mark.parametrize("arch", list(EXPECTED_ARCH))
def test_detection_from_keys_and_shapes_of_every_release(arch: str):
    enc_sd, dec_sd = load_golden().state_dicts(arch)
    kind = detect_encoder(enc_sd)
    _, config = build_decoder(dec_sd)
    assert architecture_name(kind.name, config) == EXPECTED_ARCH[arch]


def test_other_architectures_and_foreign_checkpoints_are_refused(tmp_path: Path):
    esrgan = {"conv_first.weight": torch.zeros(64, 3, 3, 3), "RRDB_trunk.0.RDB1.conv1.weight": torch.zeros(32, 64, 3, 3)}
    with pytest.raises(CheckpointError, match="ESRGAN"):
        detect_encoder(esrgan)
    with pytest.raises(CheckpointError, match="not a GSASR decoder"):
        build_decoder(esrgan)
    # An encoder file where the decoder belongs (and the reverse) is named as such.
    ckpt = tiny_checkpoint()
    with pytest.raises(CheckpointError, match="not a GSASR decoder"):
        build_decoder(ckpt.encoder)
    with pytest.raises(CheckpointError, match="not a GSASR encoder"):
        detect_encoder(ckpt.decoder)
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    torch.save({"params_ema": ckpt.decoder}, swapped / "encoder.pth")
    torch.save({"params_ema": ckpt.encoder}, swapped / "decoder.pth")
    with pytest.raises(CheckpointError, match="swap"):
        gsasr.load_model(str(swapped))


def test_truncated_weights_are_refused_with_a_reason():
    enc_sd, dec_sd = load_golden().state_dicts("EDSR_DIV2K")
    dec_sd = dict(dec_sd)
    dec_sd.pop("conv_final.weight")
    with pytest.raises(CheckpointError):
        build_decoder(dec_sd)


def test_a_non_gsasr_single_file_is_refused(tmp_path: Path):
    from safetensors.torch import save_file

    path = tmp_path / "esrgan.safetensors"
    save_file({"model.0.weight": torch.zeros(2), "model.1.sub.0.RDB1.conv1.0.weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="ESRGAN"):
        gsasr.load_model(str(path))


class _Payload:
    """Unpickling this object would create a marker file: the shape of a malicious checkpoint."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.mark.parametrize("protocol", ["torch.save", "raw pickle"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path, protocol: str):
    marker = tmp_path / "pwned"
    folder = tmp_path / "evil"
    write_official_folder(folder)
    payload = {"params_ema": {"x": torch.zeros(1)}, "extra": _Payload(str(marker))}
    if protocol == "torch.save":
        torch.save(payload, folder / "encoder.pth")
    else:
        with open(folder / "encoder.pth", "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(UnsafeCheckpointError, match="Nothing in it was executed"):
        gsasr.load_model(str(folder))
    assert not marker.exists()


def test_corrupt_file_gets_an_actionable_error(tmp_path: Path):
    folder = write_official_folder(tmp_path / "m")
    data = (folder / "decoder.pth").read_bytes()
    (folder / "decoder.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="download it again|corrupt"):
        gsasr.load_model(str(folder))


def test_missing_decoder_file_is_named(tmp_path: Path):
    folder = write_official_folder(tmp_path / "m")
    (folder / "decoder.pth").unlink()
    with pytest.raises(CheckpointError, match="decoder.pth"):
        gsasr.load_model(str(folder))
