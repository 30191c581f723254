"""`python -m gsasr` end to end on generated weights (no network)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from gsasr.cli import main


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (9, 11, 3), dtype=np.uint8), "RGB").save(folder / "photo.png")
    rgba = rng.integers(0, 255, (7, 5, 4), dtype=np.uint8)
    rgba[:, :, 3] = 255
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, "RGBA").save(folder / "sticker.png")
    Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8), "L").save(folder / "grey.webp", lossless=True)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB").save(folder / "snap.jpg")
    return folder


def test_upscale_by_scale_keeps_alpha_and_greyscale(tmp_path: Path, tiny_model_dir: Path, images: Path, capsys):
    out = tmp_path / "out"
    code = main(["upscale", str(images), "--scale", "2.5", "--model", str(tiny_model_dir), "-o", str(out),
                 "--device", "cpu"])
    assert code == 0
    with Image.open(out / "photo.png") as im:
        assert im.size == (27, 22) and im.mode == "RGB"  # floor(2.5 * 11) x floor(2.5 * 9)
    with Image.open(out / "sticker.png") as im:
        assert im.size == (12, 17) and im.mode == "RGBA"
        alpha = np.asarray(im)[:, :, 3]
        assert alpha[-1, -1] == 255 and alpha[0, 0] < 128  # the transparent corner stays transparent
    with Image.open(out / "grey.webp") as im:
        assert im.size == (15, 15)
    with Image.open(out / "snap.jpg") as im:
        assert im.size == (20, 20) and im.format == "JPEG"
    assert "[4/4]" in capsys.readouterr().err


def test_upscale_to_size_and_format(tmp_path: Path, tiny_model_dir: Path, images: Path):
    out = tmp_path / "out"
    code = main(["upscale", str(images / "photo.png"), "--size", "40x30", "--model", str(tiny_model_dir),
                 "-o", str(out), "--format", "webp", "--device", "cpu"])
    assert code == 0
    with Image.open(out / "photo.webp") as im:
        assert im.size == (40, 30)


def test_never_overwrites_without_the_flag(tmp_path: Path, tiny_model_dir: Path, images: Path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo.png").write_bytes(b"precious")
    args = ["upscale", str(images / "photo.png"), "--scale", "2", "--model", str(tiny_model_dir), "-o", str(out),
            "--device", "cpu"]
    assert main(args) == 1
    assert (out / "photo.png").read_bytes() == b"precious"
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    with Image.open(out / "photo.png") as im:
        assert im.size == (22, 18)


def test_refuses_to_replace_the_input(tiny_model_dir: Path, images: Path):
    before = (images / "photo.png").read_bytes()
    assert main(["upscale", str(images / "photo.png"), "--scale", "2", "--model", str(tiny_model_dir),
                 "-o", str(images), "--overwrite", "--device", "cpu"]) == 1
    assert (images / "photo.png").read_bytes() == before


def test_bad_arguments_are_reported(tmp_path: Path, tiny_model_dir: Path, images: Path, capsys):
    assert main(["upscale", str(images / "photo.png"), "--scale", "0.5", "--model", str(tiny_model_dir),
                 "-o", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "scale must be" in capsys.readouterr().err
    assert main(["upscale", str(tmp_path / "missing.png"), "--scale", "2", "-o", str(tmp_path / "o")]) == 2
    with pytest.raises(SystemExit):
        main(["upscale", "x.png", "--size", "4K", "-o", "o"])


def test_convert_both_ways(tmp_path: Path, tiny_model_dir: Path):
    single = tmp_path / "tiny.safetensors"
    assert main(["convert", str(tiny_model_dir), str(single)]) == 0
    assert main(["convert", str(tiny_model_dir), str(single)]) == 2  # exists: refused
    back = tmp_path / "back"
    assert main(["convert", str(single), str(back)]) == 0
    assert (back / "encoder.pth").is_file() and (back / "decoder.pth").is_file()


def test_info_and_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "gsasr", "info"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch" in result.stdout and "rasteriser" in result.stdout and "backend torch" in result.stdout


def test_download_offline_fails_with_instructions(tmp_path: Path, monkeypatch, capsys):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert main(["download", "EDSR_DF2K", "--models-dir", str(tmp_path)]) == 2
    assert "encoder.pth" in capsys.readouterr().err
