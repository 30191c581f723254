"""Command line: ``python -m gsasr {upscale,convert,download,info,eval,bench-paper}``."""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
OUTPUT_FORMATS = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "webp": ".webp"}


def _parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"size must look like WIDTHxHEIGHT, e.g. 3840x2160, got {text!r}")
    return int(m.group(2)), int(m.group(1))  # (height, width)


def _default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def build_parser() -> argparse.ArgumentParser:
    from .registry import release_names

    parser = argparse.ArgumentParser(prog="python -m gsasr", description="GSASR arbitrary-scale super-resolution.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="upscale image files by any factor or to an exact size")
    up.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    target = up.add_mutually_exclusive_group(required=True)
    target.add_argument("--scale", type=float, help="upscaling factor, e.g. 3.7 (above 1, at most 32)")
    target.add_argument("--size", type=_parse_size, help="exact output size WIDTHxHEIGHT, e.g. 3840x2160")
    up.add_argument("--model", default="EDSR_DF2K",
                    help=f"released name ({', '.join(release_names())}), an official folder or a .safetensors file")
    up.add_argument("-o", "--output", type=Path, required=True, help="output folder (created if needed)")
    up.add_argument("--format", choices=sorted(OUTPUT_FORMATS), help="output format (default: the input's)")
    up.add_argument("--overwrite", action="store_true", help="replace existing output files")
    up.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    up.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"],
                    help="reduced-precision networks (auto: bf16/fp16 on GPUs, off on CPU)")
    up.add_argument("--tile", type=int, default=None,
                    help="LR tile size in pixels for big images (default: chosen from free memory; 0: never tile)")
    up.add_argument("--models-dir", type=Path, help="where released models are stored/downloaded")
    up.add_argument("--no-clamp", action="store_true", help=argparse.SUPPRESS)

    conv = sub.add_parser("convert", help="official folder <-> single .safetensors file")
    conv.add_argument("source",
                      help="a released name, an official folder (encoder.pth + decoder.pth), or a .safetensors")
    conv.add_argument("destination", type=Path, help="a .safetensors file, or a folder for the official layout")
    conv.add_argument("--overwrite", action="store_true", help="replace existing files")
    conv.add_argument("--models-dir", type=Path, help="where released models are stored/downloaded")

    dl = sub.add_parser("download", help="download a released model")
    dl.add_argument("name", help=", ".join(release_names()))
    dl.add_argument("--models-dir", type=Path, help="folder to keep it in (default: the Hugging Face cache)")

    sub.add_parser("info", help="versions, devices and the active rasteriser backend")

    ev = sub.add_parser("eval", help="the paper's test protocol: PSNR/SSIM on Y (and LPIPS/DISTS if installed)")
    ev.add_argument("--gt", type=Path, required=True, help="folder (or file) of ground-truth images")
    ev.add_argument("--lr", type=Path, help="folder of matching LR images (default: made from the GT, MATLAB "
                                            "bicubic)")
    ev.add_argument("--scale", type=float, help="scale; required without --lr (with --lr: from the image sizes)")
    _model_options(ev)
    ev.add_argument("--csv", type=Path, help="where to write the results (default: gsasr_eval_<model>_x<scale>.csv)")
    ev.add_argument("--save", type=Path, help="also save the SR images (PNG) in this folder")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing CSV")

    bp = sub.add_parser("bench-paper", help="the paper's cost protocol: time and memory on 720x720 GT crops")
    bp.add_argument("--gt", type=Path, help="folder of images to crop 720x720 from (default: synthetic images)")
    bp.add_argument("--scales", default="2,3,4", help="comma-separated scales (default: 2,3,4)")
    bp.add_argument("--images", type=int, default=12, help="how many images, the first 2 being warm-up (default 12)")
    _model_options(bp)
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    from .registry import release_names

    parser.add_argument("--model", default="EDSR_DF2K",
                        help=f"released name ({', '.join(release_names())}), an official folder or a .safetensors")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    parser.add_argument("--amp", default="off", choices=["auto", "off", "bf16", "fp16"],
                        help="reduced-precision networks (default off: the paper's numbers are float32)")
    parser.add_argument("--models-dir", type=Path, help="where released models are stored/downloaded")


def main(argv: list[str] | None = None) -> int:
    from .errors import GSASRError

    args = build_parser().parse_args(argv)
    try:
        return {"upscale": cmd_upscale, "convert": cmd_convert, "download": cmd_download, "info": cmd_info,
                "eval": cmd_eval, "bench-paper": cmd_bench_paper}[args.command](args)
    except (GSASRError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _collect_images(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file()))
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist")
    return found


def cmd_upscale(args: argparse.Namespace) -> int:
    from . import imageio
    from .model import check_scale, load_model

    try:
        images = _collect_images(args.images)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not images:
        print("error: no image files given", file=sys.stderr)
        return 2
    if args.scale is not None:
        check_scale(args.scale)  # before the (slow) model load
    device = args.device or _default_device()
    model = load_model(args.model, device=device, models_dir=str(args.models_dir) if args.models_dir else None)
    print(f"model {model.info.release or model.info.architecture} ({model.info.architecture}) on {device}",
          file=sys.stderr)
    args.output.mkdir(parents=True, exist_ok=True)
    failures = 0
    for i, src in enumerate(images, 1):
        suffix = OUTPUT_FORMATS[args.format] if args.format else src.suffix.lower()
        if suffix not in OUTPUT_FORMATS.values():
            suffix = ".png"
        dst = args.output / f"{src.stem}{suffix}"
        prefix = f"[{i}/{len(images)}] {src.name}"
        if dst.exists() and not args.overwrite:
            print(f"{prefix}: skipped, {dst} exists (use --overwrite to replace it)", file=sys.stderr)
            failures += 1
            continue
        if dst.resolve() == src.resolve():
            print(f"{prefix}: skipped, the output would replace the input; choose another --output", file=sys.stderr)
            failures += 1
            continue
        start = time.perf_counter()
        try:
            tensor = imageio.read_image(src)
            out = model.upscale(tensor, args.scale, size=args.size, amp=args.amp, clamp=not args.no_clamp,
                                tile=args.tile)
            imageio.write_image(out, dst)
        except (OSError, ValueError) as exc:
            print(f"{prefix}: failed: {exc}", file=sys.stderr)
            failures += 1
            continue
        h, w = out.shape[-2:]
        print(f"{prefix} -> {dst} ({w}x{h}, {time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 1 if failures else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .loading import save_official_folder, save_single_file
    from .model import load_model

    model = load_model(args.source, models_dir=str(args.models_dir) if args.models_dir else None)
    checkpoint = model.to_checkpoint()
    dst: Path = args.destination
    if dst.suffix == ".safetensors":
        written = save_single_file(checkpoint, dst, overwrite=args.overwrite)
    else:
        written = save_official_folder(checkpoint, dst, overwrite=args.overwrite)
    print(f"wrote {written} ({model.info.architecture})")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .registry import download

    folder = download(args.name, args.models_dir)
    print(folder)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from . import __version__
    from .render import active_backend, available_backends, backend_device, run_self_check

    def version(module: str) -> str:
        try:
            from importlib.metadata import version as v

            return v(module)
        except Exception:
            return "not installed"

    rows = [("gsasr", __version__), ("python", platform.python_version()), ("torch", torch.__version__)]
    rows += [(m, version(m)) for m in ("numpy", "pillow", "safetensors", "huggingface_hub", "triton")]
    rows.append(("cpu threads", str(torch.get_num_threads())))
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        rows.append(("cuda", f"{torch.version.cuda} ({names})"))
    else:
        rows.append(("cuda", "not available"))
    mps = getattr(torch.backends, "mps", None)
    rows.append(("mps", "available" if mps is not None and mps.is_available() else "not available"))
    device = torch.device(_default_device())
    rows.append(("default device", str(device)))
    rows.append(("amp auto", _amp_auto_line(device)))
    if device.type == "cpu":
        rows.append(("bf16 cpu kernels", _cpu_kernels_line()))
    rows.append(("rasteriser", f"{active_backend(device)} (active on {device})"))
    for name, reason in available_backends().items():
        if reason is not None:
            status = f"unavailable: {reason}"
        elif name == "torch":
            status = "available (the reference)"
        else:  # a native backend: its self-check, run here as its first render would run it
            on = backend_device(name)
            where = f"{on} (Triton's interpreter)" if name == "triton" and on.type == "cpu" else str(on)
            status = f"available on {where}; {run_self_check(name, on).describe()}"
        rows.append((f"  backend {name}", status))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _cpu_kernels_line() -> str:
    """Whether bf16 forwards on this CPU use the compiled glue and attention kernels (archs/low_precision.py)."""
    from .render import cpu_network_kernels, cpu_network_kernels_reason

    kernels = cpu_network_kernels()
    if kernels is None:
        return f"PyTorch's operations ({cpu_network_kernels_reason()})"
    from .archs import kernel_self_check

    attention = "window attention" if kernels.attention_available() else "no window attention (PyTorch's brgemm)"
    return f"fused LayerNorm/residual and RoPE, {attention}; {kernel_self_check.check(kernels).describe()}"


def _amp_auto_line(device) -> str:
    """What amp="auto" runs the networks in on ``device``, and why."""
    from .environment import cpu_bf16_matrix_units
    from .model import resolve_amp

    dtype = resolve_amp("auto", device)
    chosen = "off (float32)" if dtype is None else str(dtype).removeprefix("torch.")
    if device.type != "cpu":
        return f"{chosen} on {device}"
    units = cpu_bf16_matrix_units()
    return (f"{chosen} on cpu (native bf16 matrix instructions: {units})" if units else
            f"{chosen} on cpu (no native bf16 matrix instructions: AMX-BF16 / AVX512-BF16)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def _load_for(args: argparse.Namespace):
    from .model import load_model

    device = args.device or _default_device()
    model = load_model(args.model, device=device, models_dir=str(args.models_dir) if args.models_dir else None)
    print(f"model {model.info.release or model.info.architecture} ({model.info.architecture}) on {device}",
          file=sys.stderr)
    return model


def cmd_eval(args: argparse.Namespace) -> int:
    from .errors import InvalidInputError
    from .evaluation import evaluate, format_table, summary_rows, write_csv
    from .model import check_scale

    if args.lr is None and args.scale is None:
        raise InvalidInputError("eval needs --scale (to make LR images from the GT) or --lr (a folder of LR images).")
    if args.scale is not None:
        check_scale(args.scale)
    try:
        gt_paths = _collect_images([args.gt])
    except FileNotFoundError as exc:
        raise InvalidInputError(str(exc)) from None
    if not gt_paths:
        raise InvalidInputError(f"no images in {args.gt}")
    name = Path(str(args.model)).stem
    csv_path = args.csv or Path(f"gsasr_eval_{name}_x{args.scale if args.scale else 'lr'}.csv")
    if csv_path.exists() and not args.overwrite:
        raise InvalidInputError(f"{csv_path} exists; pass --overwrite to replace it, or choose another --csv.")
    model = _load_for(args)

    def report(r):
        print(f"{r.name}: PSNR-Y {r.psnr:.4f} dB, SSIM-Y {r.ssim:.4f}", file=sys.stderr)

    results, notes = evaluate(model, gt_paths, scale=args.scale, lr_dir=args.lr, amp=args.amp,
                              save_dir=args.save, on_result=report)
    rows = summary_rows(results)
    print(format_table(rows))
    for note in notes:
        print(f"note: {note}")
    write_csv(rows, csv_path, overwrite=args.overwrite)
    print(f"wrote {csv_path}")
    return 0


def cmd_bench_paper(args: argparse.Namespace) -> int:
    from .environment import environment_header
    from .errors import InvalidInputError
    from .model import check_scale
    from .paper_benchmark import cropped_ground_truths, format_report, measure, synthetic_ground_truths
    from .render import active_backend

    try:
        scales = [check_scale(float(s)) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        raise InvalidInputError(f"--scales must be numbers separated by commas, got {args.scales!r}") from None
    if args.gt is not None:
        ground_truths = cropped_ground_truths(_collect_images([args.gt])[:args.images])
        source = f"{len(ground_truths)} random 720x720 crops of {args.gt}"
    else:
        ground_truths = synthetic_ground_truths(args.images)
        source = f"{len(ground_truths)} synthetic 720x720 images"
    model = _load_for(args)
    header = (environment_header(model.device, active_backend(model.device)) +
              f"\n# model {model.info.release or model.info.architecture} | amp {args.amp} | {source} | "
              f"first 2 images not averaged | memory: " +
              ("CUDA peak allocated incl. weights" if model.device.type == "cuda" else "process peak RSS"))
    costs = []
    for scale in scales:
        costs.append(measure(model, ground_truths, scale, amp=args.amp))
        print(f"x{scale:g} done", file=sys.stderr)
    print(format_report(costs, header))
    return 0
