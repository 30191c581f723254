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


def _offline_cache(monkeypatch, cache: Path, release: str, form: str = "enhanced", hf_folder: str | None = None,
                   offline: bool = True) -> None:
    """A Hugging Face cache holding `release` (in `hf_folder`) the way hf_hub_download leaves it; offline mode on."""
    import huggingface_hub.constants as hf_constants

    repo = cache / f"models--{HF_REPO_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION / (hf_folder or RELEASES[release].hf_folder)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    ckpt = tiny_checkpoint(form)
    torch.save({"params": ckpt.encoder, "params_ema": ckpt.encoder}, snapshot / "encoder.pth")
    torch.save({"params": ckpt.decoder, "params_ema": ckpt.decoder}, snapshot / "decoder.pth")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", offline)


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


# ------------------------------------------------------------------ offline in seconds, every folder spelling


def _unreachable_hub(monkeypatch) -> None:
    """Online mode, but the Hub endpoint is a local port where nothing listens (how an offline machine looks)."""
    import socket

    import huggingface_hub.constants as hf_constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: connections are refused
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    for proxy in ("https_proxy", "http_proxy", "all_proxy", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)


def _recording_hf_hub_download(monkeypatch) -> list[dict]:
    import huggingface_hub

    calls: list[dict] = []
    real = huggingface_hub.hf_hub_download

    def recording(repo_id, filename, **kwargs):
        calls.append({"filename": filename, **kwargs})
        return real(repo_id, filename, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", recording)
    return calls


def test_hub_probe_tells_a_listening_endpoint_from_a_dead_one(monkeypatch):
    import socket

    import huggingface_hub.constants as hf_constants

    from gsasr.registry import hub_reachable

    _unreachable_hub(monkeypatch)
    assert hub_reachable() is False
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable() is True
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
        assert hub_reachable() is False  # huggingface_hub's offline mode wins


def test_hub_probe_gives_up_on_a_connection_that_hangs(monkeypatch):
    """A firewall that drops packets (or a name lookup that never returns) must not stall loading for minutes."""
    import threading
    import time

    from gsasr import registry

    _unreachable_hub(monkeypatch)
    release = threading.Event()

    def hangs(*args, **kwargs):
        release.wait(30)
        raise OSError("timed out")

    monkeypatch.setattr(registry.socket, "create_connection", hangs)
    start = time.monotonic()
    try:
        assert registry.hub_reachable(timeout=0.2) is False
        assert time.monotonic() - start < 5  # the probe's own timeout, not the hung call's 30 s
    finally:
        release.set()


def test_unreachable_hub_reads_only_the_cache_and_tries_both_hatl_folders(monkeypatch, tmp_path: Path):
    _unreachable_hub(monkeypatch)
    calls = _recording_hf_hub_download(monkeypatch)
    models = tmp_path / "models" / "gsasr"
    with pytest.raises(ModelNotFoundError) as err:
        gsasr.load_model("HATL_SA1B", models_dir=str(models))
    assert [c["filename"] for c in calls] == ["GSASR_enhenced_ultra/HATL_SA1B/encoder.pth",
                                             "GSASR_enhenced_ultra/HATL-SA1B/encoder.pth"]
    assert all(c["local_files_only"] for c in calls)  # no network attempts, so no retries with back-off
    message = str(err.value)
    assert "could not be reached" in message
    assert "GSASR_enhenced_ultra/HATL_SA1B" in message and "GSASR_enhenced_ultra/HATL-SA1B" in message
    assert str(models / "HATL_SA1B") in message


def test_hatl_is_found_under_its_readme_spelling(monkeypatch, tmp_path: Path):
    """The authors' README links HATL-SA1B, their code says HATL_SA1B: a cache (or Hub) holding only the first
    spelling still gives the model."""
    from gsasr import registry

    models = tmp_path / "models"
    _offline_cache(monkeypatch, models / ".cache" / "huggingface", "HATL_SA1B",
                   hf_folder="GSASR_enhenced_ultra/HATL-SA1B", offline=False)
    _unreachable_hub(monkeypatch)
    verified = []
    monkeypatch.setattr(registry, "_verify", lambda release, files: verified.append(files))  # tiny files are EDSR
    folder = download("HATL_SA1B", models)
    assert folder == models / "HATL_SA1B" and (folder / "decoder.pth").is_file()
    assert [Path(f).parent.name for f in verified[0]] == ["HATL-SA1B", "HATL-SA1B"]


def test_cli_without_models_dir_names_the_hugging_face_cache(monkeypatch, tmp_path: Path, capsys):
    import huggingface_hub.constants as hf_constants

    from gsasr.cli import main

    _unreachable_hub(monkeypatch)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    image = tmp_path / "in.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    assert main(["upscale", "--model", "RDN_DF2K", "--scale", "2", str(image), "-o", str(tmp_path / "out.png")]) != 0
    err = capsys.readouterr().err
    assert str(tmp_path / "hf-cache") in err and "--models-dir" in err and "RDN_DF2K" in err
    assert not (tmp_path / "out.png").exists()
