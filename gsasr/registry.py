"""The ten released GSASR models: names, where they live on Hugging Face, and how to fetch them.

Weights are downloaded with ``huggingface_hub`` from the authors' repository ``mutou0308/GSASR``. Each release is
an official pair ``<folder>/encoder.pth`` + ``<folder>/decoder.pth``. After a download both files are read back with
the safe loader and must hold the expected architecture; a file that does not is deleted, not kept.
"""
from __future__ import annotations

import inspect
import os
import shutil
import socket
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, ModelNotFoundError

HF_REPO_ID = "mutou0308/GSASR"
PARTS = ("encoder", "decoder")
REACHABLE_TIMEOUT_S = 3.0
"""How long to wait for a connection to the Hub before treating this machine as offline. huggingface_hub's own
offline detection retries five times with back-off (~25 s per file when DNS fails, minutes when a firewall drops
packets); a failed probe makes us read the local cache only, so an offline load fails within seconds."""

ByteProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Release:
    name: str             # what users type: "EDSR_DF2K", "HATL_SA1B", "EDSR_paper", ...
    hf_folder: str        # folder in the Hugging Face repository
    architecture: str     # what detection must find in the files (see loading.architecture_name)
    description: str
    other_hf_folders: tuple[str, ...] = ()  # other spellings of the folder its authors use, tried in order

    @property
    def hf_folders(self) -> tuple[str, ...]:
        return (self.hf_folder, *self.other_hf_folders)

    @property
    def hf_files(self) -> tuple[str, str]:
        return files_in(self.hf_folder)

    @property
    def url(self) -> str:
        return folder_url(self.hf_folder)


def files_in(hf_folder: str) -> tuple[str, str]:
    # Always forward slashes: the official scripts used os.path.join, which breaks on Windows.
    return tuple(f"{hf_folder}/{part}.pth" for part in PARTS)  # type: ignore[return-value]


def folder_url(hf_folder: str) -> str:
    return f"https://huggingface.co/{HF_REPO_ID}/tree/main/{hf_folder}"


_PAPER = "GSASR_paper"
_ENH = "GSASR_enhenced_ultra"  # (sic) the repository's spelling

RELEASES: dict[str, Release] = {r.name: r for r in (
    Release("EDSR_paper", f"{_PAPER}/EDSR", "EDSR+paper", "paper model, EDSR-baseline encoder, DIV2K (20 M params)"),
    Release("RDN_paper", f"{_PAPER}/RDN", "RDN+paper", "paper model, RDN encoder, DIV2K (41 M params)"),
    Release("SWIN_paper", f"{_PAPER}/SWIN", "SwinIR+paper", "paper model, SwinIR encoder, DIV2K (31 M params)"),
    Release("EDSR_DIV2K", f"{_ENH}/EDSR_DIV2K", "EDSR+enhanced", "enhanced, EDSR encoder, DIV2K (26 M params)"),
    Release("EDSR_DF2K", f"{_ENH}/EDSR_DF2K", "EDSR+enhanced", "enhanced, EDSR encoder, DF2K (26 M params)"),
    Release("RDN_DIV2K", f"{_ENH}/RDN_DIV2K", "RDN+enhanced", "enhanced, RDN encoder, DIV2K (48 M params)"),
    Release("RDN_DF2K", f"{_ENH}/RDN_DF2K", "RDN+enhanced", "enhanced, RDN encoder, DF2K (48 M params)"),
    Release("SWIN_DIV2K", f"{_ENH}/SWIN_DIV2K", "SwinIR+enhanced", "enhanced, SwinIR encoder, DIV2K (39 M params)"),
    Release("SWIN_DF2K", f"{_ENH}/SWIN_DF2K", "SwinIR+enhanced", "enhanced, SwinIR encoder, DF2K (39 M params)"),
    # The authors' code says HATL_SA1B, the links in their README HATL-SA1B: both are tried.
    Release("HATL_SA1B", f"{_ENH}/HATL_SA1B", "HAT+enhanced", "ultra, HAT-L encoder, SA-1B (84 M params, best)",
            other_hf_folders=(f"{_ENH}/HATL-SA1B",)),
)}

# The official paper script calls its models plainly "EDSR", "RDN", "SWIN"; the demo says "SwinIR_*".
_ALIASES = {"EDSR": "EDSR_paper", "RDN": "RDN_paper", "SWIN": "SWIN_paper", "SWINIR": "SWIN_paper",
            "SWINIR_DIV2K": "SWIN_DIV2K", "SWINIR_DF2K": "SWIN_DF2K", "HATL-SA1B": "HATL_SA1B", "HATL": "HATL_SA1B"}


def find_release(name: str) -> Release | None:
    """The release called ``name`` (case-insensitive, official aliases accepted), or None."""
    key = name.strip()
    by_upper = {n.upper(): r for n, r in RELEASES.items()}
    key = _ALIASES.get(key.upper(), key).upper()
    return by_upper.get(key)


def release_names() -> list[str]:
    return list(RELEASES)


def local_release_folder(release: Release, models_dir: str | os.PathLike) -> Path | None:
    """``models_dir/<name>/`` if it already holds both official files."""
    folder = Path(models_dir) / release.name
    return folder if all((folder / f"{p}.pth").is_file() for p in PARTS) else None


def download(name: str, models_dir: str | os.PathLike | None = None, *, revision: str | None = None,
             progress: bool | ByteProgressFn = True) -> Path:
    """Make a released model available locally and return the folder holding ``encoder.pth`` and ``decoder.pth``.

    Without ``models_dir`` the files stay in the Hugging Face cache (``HF_HOME``). With it, they are downloaded
    through a cache kept inside ``models_dir`` (``.cache/huggingface``) and linked (or copied, across file systems)
    to ``models_dir/<name>/``; an existing complete folder is used as it is. Every spelling of the release's folder
    on the Hub is tried. When the Hub cannot be reached within REACHABLE_TIMEOUT_S, only the local cache is read,
    so an offline machine gets its answer in seconds: the error says which files to put where.

    ``progress``: True shows huggingface_hub's console bars, False nothing; a function ``progress(done, total)``
    receives the bytes of each file as they arrive (how a host application shows its own progress bar).
    """
    release = find_release(name)
    if release is None:
        raise ModelNotFoundError(f"Unknown GSASR model {name!r}. Released models: {', '.join(RELEASES)}.")
    if models_dir is not None:
        existing = local_release_folder(release, models_dir)
        if existing is not None:
            return existing
    cache_dir = None if models_dir is None else Path(models_dir) / ".cache" / "huggingface"
    online = hub_reachable()
    failures: list[str] = []
    for hf_folder in release.hf_folders:
        try:
            fetched = [_hf_fetch(f, revision, cache_dir, progress, online) for f in files_in(hf_folder)]
            break
        except _FetchFailed as exc:
            failures.append(f"{hf_folder} ({exc})")
    else:
        raise ModelNotFoundError(_download_failed(release, failures, online, models_dir))
    _verify(release, fetched)
    if models_dir is None:
        return Path(fetched[0]).parent
    target = Path(models_dir) / release.name
    target.mkdir(parents=True, exist_ok=True)
    for part, src in zip(PARTS, fetched, strict=True):
        _link_or_copy(Path(src), target / f"{part}.pth")
    return target


class _FetchFailed(Exception):
    """One file could not be fetched; the message is the short reason."""


def _hf_fetch(filename: str, revision: str | None, cache_dir: Path | None, progress: bool | ByteProgressFn,
              online: bool) -> str:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import LocalEntryNotFoundError, disable_progress_bars, enable_progress_bars
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a declared dependency
        raise _FetchFailed("huggingface_hub is not installed") from exc
    (enable_progress_bars if progress else disable_progress_bars)()
    # tqdm_class arrived in huggingface_hub 0.2x; older ones still download, with their console bar only.
    reports = callable(progress) and "tqdm_class" in inspect.signature(hf_hub_download).parameters
    extra = {"tqdm_class": _reporting_tqdm(progress)} if reports else {}
    try:
        return hf_hub_download(HF_REPO_ID, filename, revision=revision, local_files_only=not online,
                               cache_dir=None if cache_dir is None else str(cache_dir), **extra)
    except LocalEntryNotFoundError as exc:
        if not online:
            raise _FetchFailed("not in the local cache") from exc
        raise _FetchFailed(f"{type(exc).__name__}: the connection failed") from exc
    except Exception as exc:  # missing file, auth, server errors: all end the same way for the user
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise _FetchFailed(f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__) from exc


def hub_reachable(timeout: float = REACHABLE_TIMEOUT_S) -> bool:
    """Whether a connection to the Hugging Face endpoint opens within ``timeout`` seconds (name lookup included).

    False in huggingface_hub's offline mode (HF_HUB_OFFLINE=1). Behind a configured proxy the proxy decides, so
    the Hub counts as reachable and huggingface_hub's own timeouts apply."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(k in urllib.request.getproxies() for k in ("https", "http", "all")):
        return True
    endpoint = urlsplit(constants.ENDPOINT)
    address = (endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443))
    opened: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            opened.append(True)
        except OSError:
            opened.append(False)

    # A thread, because a name lookup that hangs ignores the socket timeout; the daemon is left to finish alone.
    thread = threading.Thread(target=probe, name="gsasr-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened and opened[0])


def hf_cache_folder() -> str:
    """Where huggingface_hub keeps downloads when no models folder is given (HF_HUB_CACHE / HF_HOME)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _download_failed(release: Release, failures: list[str], online: bool,
                     models_dir: str | os.PathLike | None) -> str:
    why = "" if online else (f"huggingface.co could not be reached within {REACHABLE_TIMEOUT_S:g} s (offline, a "
                             f"firewall, or HF_HUB_OFFLINE=1), so only the local cache was searched. ")
    return (f"Could not get {release.name} from huggingface.co/{HF_REPO_ID}: tried {'; '.join(failures)}. {why}"
            f"{install_instructions(release, models_dir)}")


def _reporting_tqdm(report: ByteProgressFn):
    """A console progress bar class (what huggingface_hub accepts) that also sends (done, total) to ``report``."""
    from tqdm.auto import tqdm

    class ReportingTqdm(tqdm):
        def update(self, n=1):
            shown = super().update(n)
            report(int(self.n), int(self.total or 0))
            return shown

    return ReportingTqdm


def install_instructions(release: Release, models_dir: str | os.PathLike | None) -> str:
    source = " or ".join(folder_url(f) for f in release.hf_folders)
    if models_dir is not None:
        where = Path(models_dir) / release.name
        return (f"To install it by hand, download encoder.pth and decoder.pth from {source} and put them in "
                f"{where}{os.sep} (so that {where / 'encoder.pth'} and {where / 'decoder.pth'} exist).")
    example = Path.home() / "gsasr-models"
    return (f"Without a models folder, downloads go to the Hugging Face cache ({hf_cache_folder()}). To install it "
            f"by hand, download encoder.pth and decoder.pth from {source} into {example / release.name}{os.sep}, "
            f"then use models_dir={str(example)!r} (command line: --models-dir {example}), or give that folder "
            f"itself as the model.")


def _verify(release: Release, files: list[str]) -> None:
    """Read both files back safely and check the architecture; delete what is wrong so it is fetched again."""
    from .loading import architecture_name, build_decoder, canonical_state_dict, detect_encoder, read_checkpoint

    try:
        enc = canonical_state_dict(read_checkpoint(files[0])[0], files[0])
        dec = canonical_state_dict(read_checkpoint(files[1])[0], files[1])
        kind = detect_encoder(enc)
        _net, config = build_decoder(dec)
        found = architecture_name(kind.name, config)
    except CheckpointError as exc:
        _remove(files)
        raise CheckpointError(f"The downloaded {release.name} files failed verification and were deleted: "
                              f"{exc}") from exc
    if found != release.architecture:
        _remove(files)
        raise CheckpointError(f"The downloaded {release.name} files hold a {found} model, expected "
                              f"{release.architecture}; they were deleted.")


def _remove(files: list[str]) -> None:
    for f in files:
        real = os.path.realpath(f)
        for p in {f, real}:
            try:
                os.remove(p)
            except OSError:
                pass


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link a cached blob into the models folder (no second copy on disk), or copy it; atomic either way."""
    real = Path(os.path.realpath(src))
    tmp = dst.with_name(dst.name + ".partial")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(real, tmp)
    except OSError:
        shutil.copyfile(real, tmp)
    os.replace(tmp, dst)
