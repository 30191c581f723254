"""`python -m gsasr eval` and `bench-paper` end to end on generated weights and a tiny image set."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from conftest import write_official_folder
from PIL import Image

from gsasr.cli import main
from gsasr.errors import InvalidInputError
from gsasr.evaluation import find_lr, make_lr
from gsasr.imageio import read_image
from gsasr.paper_benchmark import dmax_for, format_report, measure, synthetic_ground_truths


def _photo(path: Path, w: int, h: int, seed: int) -> Path:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=gen)
    image = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
    arr = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> dict:
    gt = tmp_path / "gt"
    _photo(gt / "a.png", 50, 41, 0)
    _photo(gt / "b.png", 37, 44, 1)
    return {"gt": gt, "model": write_official_folder(tmp_path / "model"), "tmp": tmp_path}


def test_lr_generation_follows_the_paper_for_integer_and_fractional_scales():
    gt = torch.rand(3, 41, 50)
    lr, cropped = make_lr(gt, 4)
    assert lr.shape[-2:] == (10, 12) and cropped.shape[-2:] == (40, 48)  # GT cropped to a multiple of 4
    assert torch.equal(cropped, gt[:, :40, :48])
    lr, cropped = make_lr(gt, 3.7)
    assert lr.shape[-2:] == (11, 13) and cropped.shape[-2:] == (math.floor(11 * 3.7), math.floor(13 * 3.7))
    assert torch.equal(lr * 255, (lr * 255).round())  # 8-bit levels, like a saved PNG


def test_lr_files_are_matched_by_name_or_basicsr_suffix(tmp_path):
    (tmp_path / "0801x4.png").touch()
    (tmp_path / "baby.png").touch()
    assert find_lr(Path("gt/0801.png"), tmp_path).name == "0801x4.png"
    assert find_lr(Path("gt/baby.png"), tmp_path).name == "baby.png"
    with pytest.raises(InvalidInputError, match="No LR image for bird.png"):
        find_lr(Path("gt/bird.png"), tmp_path)


def test_eval_makes_lr_images_reports_psnr_ssim_and_writes_a_csv(dataset, capsys):
    csv_path = dataset["tmp"] / "results.csv"
    assert main(["eval", "--gt", str(dataset["gt"]), "--scale", "3", "--model", str(dataset["model"]),
                 "--csv", str(csv_path), "--device", "cpu", "--save", str(dataset["tmp"] / "sr")]) == 0
    out = capsys.readouterr().out
    assert "psnr_y" in out and "average" in out and "LPIPS not computed" in out
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["image"] for r in rows] == ["a", "b", "average"]
    assert rows[0]["sr"] == "48x39" and rows[0]["lr"] == "16x13"
    psnrs = [float(r["psnr_y"]) for r in rows]
    assert psnrs[2] == pytest.approx((psnrs[0] + psnrs[1]) / 2, abs=1e-3)
    assert Image.open(dataset["tmp"] / "sr" / "a.png").size == (48, 39)
    # Never overwrite the results unasked.
    assert main(["eval", "--gt", str(dataset["gt"]), "--scale", "3", "--model", str(dataset["model"]),
                 "--csv", str(csv_path), "--device", "cpu"]) == 2
    assert "exists" in capsys.readouterr().err


def test_eval_with_given_lr_images_infers_the_scale(dataset, capsys):
    lr_dir = dataset["tmp"] / "lr"
    lr_dir.mkdir()
    for name in ("a", "b"):
        lr, _ = make_lr(read_image(dataset["gt"] / f"{name}.png")[0], 2)
        Image.fromarray((lr.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(lr_dir / f"{name}x2.png")
        cropped = Image.open(dataset["gt"] / f"{name}.png")
        cropped.crop((0, 0, cropped.width // 2 * 2, cropped.height // 2 * 2)).save(dataset["gt"] / f"{name}.png")
    csv_path = dataset["tmp"] / "given.csv"
    assert main(["eval", "--gt", str(dataset["gt"]), "--lr", str(lr_dir), "--model", str(dataset["model"]),
                 "--csv", str(csv_path), "--device", "cpu"]) == 0
    rows = list(csv.DictReader(open(csv_path)))
    assert rows[0]["scale"] == "2" and rows[0]["sr"] == "50x40"


def test_eval_needs_a_scale_or_lr_images(dataset, capsys):
    assert main(["eval", "--gt", str(dataset["gt"]), "--model", str(dataset["model"])]) == 2
    assert "--scale" in capsys.readouterr().err


def test_bench_paper_times_whole_720_images_and_drops_the_warm_up(dataset, capsys):
    import gsasr

    model = gsasr.load_model(str(dataset["model"]))
    ground_truths = synthetic_ground_truths(3)
    assert all(g.shape == (3, 720, 720) for g in ground_truths)
    cost = measure(model, ground_truths, 4)
    assert cost.lr_hw == (180, 180) and cost.sr_hw == (720, 720) and len(cost.times_ms) == 3
    assert cost.measured()[0] == cost.times_ms[2:]
    report = format_report([cost], "# header")
    assert report.splitlines()[0] == "# header" and report.splitlines()[-1].startswith("RESULT x4_ms=")
    assert (dmax_for(2), dmax_for(3.7), dmax_for(4)) == (0.05, 0.1, 0.1)
    with pytest.raises(InvalidInputError, match="more than 2 images"):
        measure(model, ground_truths[:2], 4)


def test_bench_paper_command(dataset, capsys):
    assert main(["bench-paper", "--model", str(dataset["model"]), "--scales", "4", "--images", "3",
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("# commit") and "synthetic" in lines[1] and lines[-1].startswith("RESULT x4_ms=")
