"""Released models: names, Hugging Face paths, and the download path run against a local Hugging Face cache."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_checkpoint

import gsasr
from gsasr.errors import CheckpointError, ModelNotFoundError
from gsasr.registry import HF_REPO_ID, RELEASES, download, find_release

REVISION = "0123456789abcdef0123456789abcdef01234567"


def test_the_ten_releases_and_their_hugging_face_paths():
    assert len(RELEASES) == 10
    assert RELEASES["EDSR_paper"].hf_files == ("GSASR_paper/EDSR/encoder.pth", "GSASR_paper/EDSR/decoder.pth")
    assert RELEASES["HATL_SA1B"].hf_files[0] == "GSASR_enhenced_ultra/HATL_SA1B/encoder.pth"
    for name in ("EDSR", "RDN", "SWIN"):
        assert find_release(name).name == f"{name}_paper"  # the official paper script's names
    assert find_release("edsr_df2k").name == "EDSR_DF2K"
    assert find_release("SwinIR_DIV2K").name == "SWIN_DIV2K"  # the official demo's spelling
    assert find_release("nope") is None


def _offline_cache(monkeypatch, cache: Path, release: str, form: str = "enhanced") -> None:
    """A Hugging Face cache holding `release` the way hf_hub_download leaves it, and offline mode on."""
    import huggingface_hub.constants as hf_constants

    repo = cache / f"models--{HF_REPO_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION / RELEASES[release].hf_folder
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    ckpt = tiny_checkpoint(form)
    torch.save({"params": ckpt.encoder, "params_ema": ckpt.encoder}, snapshot / "encoder.pth")
    torch.save({"params": ckpt.decoder, "params_ema": ckpt.decoder}, snapshot / "decoder.pth")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


def test_download_into_the_hugging_face_cache(monkeypatch, tmp_path: Path):
    cache = tmp_path / "hf"
    _offline_cache(monkeypatch, cache, "EDSR_DF2K")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    folder = download("EDSR_DF2K")
    assert (folder / "encoder.pth").is_file() and REVISION in str(folder)
    model = gsasr.load_model(str(folder))
    assert model.info.metadata["source_revision"] == REVISION


def test_download_into_a_models_folder_then_load_by_name(monkeypatch, tmp_path: Path):
    models = tmp_path / "models" / "gsasr"
    _offline_cache(monkeypatch, models / ".cache" / "huggingface", "EDSR_DF2K")
    model = gsasr.load_model("EDSR_DF2K", models_dir=str(models))
    assert model.info.release == "EDSR_DF2K" and model.info.architecture == "EDSR+enhanced"
    assert (models / "EDSR_DF2K" / "encoder.pth").is_file()
    assert (models / "EDSR_DF2K" / "decoder.pth").is_file()
    # Second time: found on disk, nothing fetched (the cache may even be gone).
    import shutil

    shutil.rmtree(models / ".cache")
    assert gsasr.load_model("EDSR_DF2K", models_dir=str(models), download=False).info.release == "EDSR_DF2K"


def test_downloaded_files_of_the_wrong_architecture_are_deleted(monkeypatch, tmp_path: Path):
    models = tmp_path / "models"
    _offline_cache(monkeypatch, models / ".cache" / "huggingface", "HATL_SA1B")  # holds an EDSR model
    with pytest.raises(CheckpointError, match="expected HAT\\+enhanced"):
        download("HATL_SA1B", models)
    assert not (models / "HATL_SA1B" / "encoder.pth").exists()


def test_offline_without_files_says_what_to_put_where(monkeypatch, tmp_path: Path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    models = tmp_path / "models"
    with pytest.raises(ModelNotFoundError) as err:
        gsasr.load_model("RDN_DF2K", models_dir=str(models))
    message = str(err.value)
    assert "GSASR_enhenced_ultra/RDN_DF2K" in message
    assert str(models / "RDN_DF2K") in message and "encoder.pth" in message and "decoder.pth" in message


def test_unknown_names_list_the_released_ones():
    with pytest.raises(ModelNotFoundError, match="HATL_SA1B"):
        gsasr.load_model("ESRGAN_x4")


def test_download_progress_reaches_a_callback_through_huggingface_hubs_bar(monkeypatch):
    import inspect
    import io

    from huggingface_hub import hf_hub_download

    from gsasr.registry import _reporting_tqdm

    assert "tqdm_class" in inspect.signature(hf_hub_download).parameters  # how the class gets to the download
    seen = []
    bar = _reporting_tqdm(lambda done, total: seen.append((done, total)))(total=300, file=io.StringIO())
    bar.update(100)
    bar.update(200)
    bar.close()
    assert seen == [(100, 300), (300, 300)]
