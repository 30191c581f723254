"""GSASRModel: one low-resolution image in, the same image at any scale out.

upscale = check inputs -> pad -> encode -> decode to Gaussians -> render on the padded canvas -> crop.

* Padding: the official code reflect-pads the bottom and right edges up to a multiple of both networks' window
  sizes, which fails when a side is not longer than the pad (about half a window). We pad with the same mirror
  (reflection without repeating the edge pixel) but keep mirroring for as long as needed, so any side >= 1 pixel
  works; wherever the official padding works, ours gives the identical input.
* The output is ``floor(s*H) x floor(s*W)`` for ``scale=s``; ``size=(h, w)`` asks for an exact size. GSASR renders
  isotropically; for a size whose aspect ratio differs from the input's, the two axes get their own scale and the
  decoder is conditioned on their geometric mean.
* Greyscale images are upscaled as grey RGB and averaged back; RGBA images keep their alpha, which is not colour
  and is resized separately (bicubic, clamped to [0, 1]).
"""
from __future__ import annotations

import contextlib
import logging
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import tiling
from .archs import kernel_self_check
from .archs.low_precision import cast_weights, fused_glue
from .environment import cpu_bf16_matrix_units
from .errors import InsufficientMemoryError, InvalidInputError
from .finite import all_finite
from .render import cpu_network_kernels, render_gaussians

MIN_SCALE_EXCLUSIVE = 1.0   # GSASR is an upscaler; for shrinking use a plain resize
MAX_SCALE = 32.0            # the paper evaluates up to x30
MAX_OUTPUT_PIXELS = 2**30   # one gigapixel per image: beyond this a float32 output alone needs > 12 GB
AMP_MODES = ("off", "auto", "bf16", "fp16")

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


@dataclass
class ModelInfo:
    architecture: str                  # e.g. "EDSR+enhanced"
    release: str | None = None         # e.g. "EDSR_DF2K" when loaded from a known release
    metadata: dict[str, str] = field(default_factory=dict)


def mirror_indices(n: int, total: int, device: torch.device | None = None) -> torch.Tensor:
    """Indices 0..total-1 into a length-n axis, reflected at the ends (period 2(n-1)); all zeros when n == 1.

    For total - n < n this equals ``F.pad(mode="reflect")`` on the bottom/right, as the official code pads.
    """
    idx = torch.arange(total, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = idx % period
    return torch.where(idx < n, idx, period - idx)


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    hp, wp = math.ceil(h / multiple) * multiple, math.ceil(w / multiple) * multiple
    if (hp, wp) == (h, w):
        return image
    rows = mirror_indices(h, hp, image.device)
    cols = mirror_indices(w, wp, image.device)
    return image.index_select(-2, rows).index_select(-1, cols)


@dataclass(frozen=True)
class OutputGeometry:
    out_hw: tuple[int, int]        # the requested output
    scale_hw: tuple[float, float]  # rendering scale along height and width (equal unless size= forces otherwise)

    @property
    def condition_scale(self) -> float:
        """The scale the decoder is told: the isotropic scale, or the geometric mean of the two."""
        sy, sx = self.scale_hw
        return sy if sy == sx else math.sqrt(sy * sx)

    def canvas_hw(self, padded_hw: tuple[int, int]) -> tuple[int, int]:
        return math.floor(self.scale_hw[0] * padded_hw[0]), math.floor(self.scale_hw[1] * padded_hw[1])


def check_scale(scale: float) -> float:
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise InvalidInputError(f"scale must be a number, got {scale!r}.") from None
    if not math.isfinite(s) or not (MIN_SCALE_EXCLUSIVE < s <= MAX_SCALE):
        raise InvalidInputError(f"scale must be a finite number above {MIN_SCALE_EXCLUSIVE:g} and at most "
                                f"{MAX_SCALE:g}, got {scale!r}. To shrink an image use a plain resize.")
    return s


def output_geometry(in_hw: tuple[int, int], scale: float | None = None,
                    size: tuple[int, int] | None = None) -> OutputGeometry:
    """Resolve ``scale=s`` (output floor(s*H) x floor(s*W)) or ``size=(h, w)`` into rendering scales."""
    h, w = in_hw
    if (scale is None) == (size is None):
        raise InvalidInputError("Give exactly one of scale=... or size=(height, width).")
    if scale is not None:
        s = check_scale(scale)
        geometry = OutputGeometry((math.floor(s * h), math.floor(s * w)), (s, s))
    else:
        try:
            oh, ow = (int(v) for v in size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise InvalidInputError(f"size must be (height, width) in pixels, got {size!r}.") from None
        if oh < 1 or ow < 1:
            raise InvalidInputError(f"size must be positive, got {size!r}.")
        geometry = OutputGeometry((oh, ow), _scales_for_size((h, w), (oh, ow)))
        for s in geometry.scale_hw:
            if not (MIN_SCALE_EXCLUSIVE < s <= MAX_SCALE):
                raise InvalidInputError(
                    f"size {oh}x{ow} from a {h}x{w} image needs a scale of {s:.4g}; GSASR supports scales above "
                    f"{MIN_SCALE_EXCLUSIVE:g} and up to {MAX_SCALE:g} on each axis.")
    if geometry.out_hw[0] * geometry.out_hw[1] > MAX_OUTPUT_PIXELS:
        raise InvalidInputError(f"The output would be {geometry.out_hw[0]}x{geometry.out_hw[1]} pixels, over the "
                                f"{MAX_OUTPUT_PIXELS / 2**30:g}-gigapixel limit per image; ask for a smaller scale.")
    return geometry


def _scales_for_size(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[float, float]:
    """One scale s with floor(s*H) == h and floor(s*W) == w when one exists (aspect kept), else one per axis."""
    (h, w), (oh, ow) = in_hw, out_hw
    lo, hi = max(oh / h, ow / w), min((oh + 1) / h, (ow + 1) / w)
    s = lo
    # Step up by ulps until float rounding agrees with the exact floor (a handful of steps at most).
    for _ in range(8):
        if math.floor(s * h) >= oh and math.floor(s * w) >= ow:
            break
        s = math.nextafter(s, math.inf)
    if s < hi and math.floor(s * h) == oh and math.floor(s * w) == ow:
        return s, s
    return _exact_axis_scale(h, oh), _exact_axis_scale(w, ow)


def _exact_axis_scale(n: int, target: int) -> float:
    s = target / n
    while math.floor(s * n) < target:
        s = math.nextafter(s, math.inf)
    return s


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA GPUs that have it, fp16 on older CUDA GPUs and Apple MPS; on a CPU bf16 where it has
    native bf16 matrix instructions (AMX-BF16, AVX512-BF16: several times float32's speed), else off (elsewhere
    bf16 is emulated and slower than float32)."""
    if amp not in AMP_MODES:
        raise InvalidInputError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}.")
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    if device.type == "cpu" and cpu_bf16_matrix_units() is not None:
        return torch.bfloat16
    return None


def _warn_if_slow_amp(amp: str, device: torch.device) -> None:
    """One log line per call of the public API (not per tile) when the amp mode is a trap on this device."""
    if amp == "fp16" and device.type == "cpu":
        # Measured: RDN_DIV2K on a 23x31 image, 31 s in fp16 against 1.3 s in float32 (2 cores).
        logger.warning("GSASR: amp=fp16 on a CPU is much slower than amp=off (PyTorch has no fast float16 "
                       "convolution for CPUs); use amp=off or auto.")


class GSASRModel(nn.Module):
    """An encoder and a Gaussian decoder, with the official pre- and post-processing around them."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, info: ModelInfo):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.info = info
        self.eval()

    @property
    def denominator(self) -> int:
        """LR sides are padded to a multiple of this (the LCM of both networks' window sizes)."""
        return math.lcm(int(getattr(self.encoder, "window_size", 1)), int(self.decoder.window_size))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def __repr__(self) -> str:
        name = self.info.release or self.info.architecture
        return f"GSASRModel({name}, architecture={self.info.architecture}, device={self.device})"

    def to_checkpoint(self):
        """The weights and provenance as a :class:`loading.Checkpoint` (what ``python -m gsasr convert`` writes)."""
        from . import __version__
        from .loading import Checkpoint

        meta = {k: v for k, v in self.info.metadata.items() if k in ("release", "source_revision")}
        meta.update(architecture=self.info.architecture, written_by=f"gsasr {__version__}")
        return Checkpoint(self.encoder.state_dict(), self.decoder.state_dict(), meta)

    @torch.inference_mode()
    def gaussians(self, image: torch.Tensor, scale: float, *, amp: str = "off") -> torch.Tensor:
        """Raw Gaussian parameters (B, 16*Hp*Wp, 9) for (B, 3, H, W) images, official order and values.

        The networks compute in the model's parameter dtype: float32 normally, float64 after ``model.double()``
        (a slow reference mode that removes float32 rounding from comparisons with the official model).
        """
        resolve_amp(amp, self.device)  # a bad mode fails before the warning
        _warn_if_slow_amp(amp, self.device)
        return self._networks(self._pad(image), scale, amp)

    def _pad(self, image: torch.Tensor) -> torch.Tensor:
        compute_dtype = next(self.parameters()).dtype
        return pad_to_multiple(image.to(self.device, compute_dtype), self.denominator)

    def _networks(self, x: torch.Tensor, scale: float, amp: str) -> torch.Tensor:
        """Encoder + decoder on padded images (sides multiples of the denominator) in ``amp``: (B, 16 h w, 9)."""
        with self.precision(resolve_amp(amp, x.device)):
            return self._run_networks(x, scale)

    def _run_networks(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        """:meth:`_networks` in the precision the caller entered (once for all the tiles of an image)."""
        out = self.decoder(self.encoder(x), scale)
        return out if out.dtype == torch.float64 else out.float()

    @contextlib.contextmanager
    def precision(self, amp_dtype: torch.dtype | None):
        """Where the networks run (see :func:`resolve_amp`): nothing for None (the parameters' dtype), else autocast
        to ``amp_dtype``; on a CPU also with the weights cast once and convolutions channels-last
        (archs/low_precision.py), where bf16 products are so fast that per-call weight casts would matter."""
        with contextlib.ExitStack() as stack:
            if amp_dtype is not None:
                stack.enter_context(torch.autocast(device_type=self.device.type, dtype=amp_dtype))
                if self.device.type == "cpu":
                    stack.enter_context(cast_weights(self, amp_dtype))
                    if amp_dtype == torch.bfloat16:  # the compiled kernels write bf16; checked once per process
                        stack.enter_context(fused_glue(kernel_self_check.usable(cpu_network_kernels())))
            yield

    def bytes_per_lr_pixel(self) -> int:
        """Conservative peak activation memory of the networks per LR pixel of a tile (see :mod:`gsasr.tiling`)."""
        kind = self.info.architecture.split("+")[0]
        return tiling.BYTES_PER_LR_PIXEL.get(kind, tiling.DEFAULT_BYTES_PER_LR_PIXEL)

    @torch.inference_mode()
    def upscale(self, image: torch.Tensor, scale: float | None = None, *, size: tuple[int, int] | None = None,
                clamp: bool = True, amp: str = "off", dmax: float = 0.1, backend: str = "auto",
                tile: int | None = None, progress: ProgressFn | None = None,
                interrupt: Callable[[], None] | None = None) -> torch.Tensor:
        """Upscale (B, C, H, W) float images in [0, 1], C in {1, 3, 4}, by ``scale`` or to ``size=(h, w)``.

        Returns (B, C, h, w) on the input's device in the input's dtype. ``amp`` runs the networks in reduced
        precision (off, auto, bf16, fp16); rendering always accumulates in float32. ``clamp`` clips to [0, 1]
        (the raw model output can overshoot).

        ``tile``: None (default) picks a tile size from the memory available (no tiling when the image fits);
        0 never tiles; N runs the networks on LR tiles of N x N pixels (rounded to a multiple of
        ``model.denominator``) plus context, and renders all their Gaussians together, so there is no seam. When
        memory runs out (CUDA, or a CPU allocation failure) the image is retried with halved tiles, down to
        2 x denominator, except with ``tile=0``.

        ``progress(done, total)`` is called after each tile (one per image when not tiled), counting over the
        whole batch; after an out-of-memory retry ``done`` restarts at the start of that image with the new
        total. Raising from it cancels.

        ``interrupt()`` is called often while working: before every layer of the networks and between rendered
        strips. Raising from it (e.g. a host application's Cancel) stops the upscale within a fraction of a tile.
        """
        _check_image(image)
        resolve_amp(amp, self.device)  # a bad mode fails before any work
        _warn_if_slow_amp(amp, self.device)
        b, c, h, w = image.shape
        geometry = output_geometry((h, w), scale, size)
        rgb = image[:, :3] if c >= 3 else image.expand(b, 3, h, w)
        padded_hw = tuple(math.ceil(n / self.denominator) * self.denominator for n in (h, w))
        core = self._initial_tile(tile, padded_hw, geometry)
        counter = _TileCounter(progress)
        outs = []
        for i in range(b):
            while True:
                counter.start_image(tiling.count_tiles(padded_hw, core), b - i)
                try:
                    with _calling_before_layers(self, interrupt):
                        outs.append(self._upscale_one(rgb[i:i + 1], geometry, core, amp=amp, dmax=dmax,
                                                      backend=backend, on_tile=counter.tick, interrupt=interrupt))
                    counter.finish_image()
                    break
                except Exception as exc:  # noqa: BLE001 -- only allocation failures are retried, the rest re-raised
                    if not tiling.is_out_of_memory(exc) or tile == 0:  # tile=0: the caller said never tile
                        raise
                    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                # Out of the except block, so the failed attempt's traceback (and the tensors its frames hold) is
                # gone before the cache is emptied and the retry allocates.
                tiling.free_memory(self.device)
                smaller = tiling.smaller_tile(core, padded_hw, self.denominator)
                if smaller is None:
                    tried = f"{core}x{core} LR tiles" if core else "an image this small"
                    raise InsufficientMemoryError(
                        f"Out of memory on {self.device} even with {tried} ({reason}). Free memory "
                        f"(close other programs or unload other models), try amp='auto', or upscale a smaller "
                        f"image.")
                core = smaller
        out = torch.cat(outs, dim=0)
        if c == 1:
            out = out.mean(dim=1, keepdim=True)
        if clamp:
            out = out.clamp_(0.0, 1.0)
        if c == 4:
            alpha = F.interpolate(image[:, 3:4].float(), size=geometry.out_hw, mode="bicubic", align_corners=False)
            out = torch.cat([out.to(alpha.device), alpha.clamp_(0.0, 1.0)], dim=1)
        return out.to(device=image.device, dtype=image.dtype)

    def _initial_tile(self, tile: int | None, padded_hw: tuple[int, int], geometry: OutputGeometry) -> int:
        """The core size to start with: 0 (whole image) or a multiple of the denominator below the image."""
        if tile is None:
            core = tiling.auto_tile(padded_hw, geometry.out_hw, self.denominator, self.bytes_per_lr_pixel(),
                                    tiling.available_bytes(self.device), self.device.type)
        else:
            try:
                n = operator.index(tile)  # ints and integer-like numbers (numpy), not floats or bools
            except TypeError:
                n = -1
            if isinstance(tile, bool) or n < 0:
                raise InvalidInputError(f"tile must be None (automatic), 0 (never tile) or a positive number of "
                                        f"LR pixels, got {tile!r}.")
            core = tiling.round_tile(n, self.denominator) if n > 0 else 0
        # A core covering the whole image is the untiled path (cheaper: no context is computed twice).
        return 0 if core >= max(padded_hw) else core

    def _upscale_one(self, image: torch.Tensor, geometry: OutputGeometry, tile: int, *, amp: str, dmax: float,
                     backend: str, on_tile: Callable[[], None],
                     interrupt: Callable[[], None] | None = None) -> torch.Tensor:
        scale = geometry.condition_scale
        padded = self._pad(image)
        # One precision context for all tiles: on a CPU it casts the weights to bf16 once per image (every time for
        # weights made under inference_mode, which cannot be cached), not once per tile.
        with self.precision(resolve_amp(amp, padded.device)):
            if tile == 0:
                gaussians = self._run_networks(padded, scale)[0]
                on_tile()
            else:
                gaussians = tiling.tiled_gaussians(lambda x: self._run_networks(x, scale), padded, tile,
                                                   self.denominator, on_tile)
        canvas = geometry.canvas_hw((padded.shape[-2], padded.shape[-1]))
        del padded
        sy, sx = geometry.scale_hw
        out = tiling.render_in_strips(gaussians, sy if sy == sx else (sy, sx), canvas, geometry.out_hw, dmax=dmax,
                                      backend=backend, before_strip=interrupt)
        return out.unsqueeze(0)

    def render(self, gaussians: torch.Tensor, input_hw: tuple[int, int], geometry: OutputGeometry, *,
               dmax: float = 0.1, backend: str = "auto") -> torch.Tensor:
        """Draw one image's (N, 9) raw Gaussians (from :meth:`gaussians`) as the (3, h, w) output for an input of
        ``input_hw``: the canvas covers the padded input; only the unpadded top-left part is rendered."""
        hp, wp = (math.ceil(n / self.denominator) * self.denominator for n in input_hw)
        canvas = geometry.canvas_hw((hp, wp))
        sy, sx = geometry.scale_hw
        oh, ow = geometry.out_hw
        return render_gaussians(gaussians, sy if sy == sx else (sy, sx), canvas, dmax=dmax, region=(0, 0, oh, ow),
                                backend=backend)


@contextlib.contextmanager
def _calling_before_layers(model: nn.Module, fn: Callable[[], None] | None):
    """Call ``fn()`` before every submodule's forward while inside the block (how Cancel reaches into a tile)."""
    if fn is None:
        yield
        return
    handles = [m.register_forward_pre_hook(lambda *_: fn()) for m in model.modules() if m is not model]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _TileCounter:
    """Progress over all tiles of a batch: ``progress(done, total)`` after each tile."""

    def __init__(self, progress: ProgressFn | None):
        self.progress = progress
        self.done = 0          # tiles finished, images before the current one included
        self.image_start = 0   # ``done`` when the current image started
        self.total = 0

    def start_image(self, tiles_per_image: int, images_left: int) -> None:
        """(Re)start the current image; the remaining images are counted with the current tile size."""
        self.done = self.image_start
        self.total = self.image_start + tiles_per_image * images_left

    def finish_image(self) -> None:
        self.image_start = self.done

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor):
        raise InvalidInputError(f"image must be a torch.Tensor of shape (B, C, H, W), got {type(image).__name__}.")
    if image.dim() != 4:
        raise InvalidInputError(f"image must have shape (B, C, H, W), got {tuple(image.shape)}; add a batch "
                                f"dimension with image[None] for a single image.")
    b, c, h, w = image.shape
    if c not in (1, 3, 4):
        raise InvalidInputError(f"image must have 1, 3 or 4 channels in dimension 1 (B, C, H, W), got {c}; "
                                f"a (B, H, W, C) image needs .permute(0, 3, 1, 2).")
    if b < 1 or h < 1 or w < 1:
        raise InvalidInputError(f"image is empty: shape {tuple(image.shape)}.")
    if not image.is_floating_point():
        raise InvalidInputError(f"image must be floating point in [0, 1], got {image.dtype}; divide 8-bit images "
                                f"by 255.")
    if not all_finite(image):
        raise InvalidInputError("image contains NaN or infinite values.")


def load_model(source: str, device: str | torch.device = "cpu", *, models_dir: str | None = None,
               download: bool = True, download_progress: Callable[[int, int], None] | None = None) -> GSASRModel:
    """Load a GSASR model from a released name, an official folder, or a single ``.safetensors`` file.

    Released names ("EDSR_DF2K", "HATL_SA1B", ...) are looked up in ``models_dir/<name>/`` and otherwise downloaded
    from Hugging Face (into ``models_dir``, or the Hugging Face cache when it is None) unless ``download=False``;
    ``download_progress(done, total)`` then receives the bytes of each file as they arrive.
    """
    from pathlib import Path

    from .errors import ModelNotFoundError
    from .loading import architecture_name, build_decoder, build_encoder, read_any
    from .registry import RELEASES, find_release, install_instructions, local_release_folder
    from .registry import download as download_release

    path = Path(str(source)).expanduser()
    release = None
    if path.exists():
        checkpoint = read_any(path)
    else:
        release = find_release(str(source))
        if release is None:
            raise ModelNotFoundError(f"{source!r} is neither an existing file/folder nor a released model name. "
                                     f"Released models: {', '.join(RELEASES)}.")
        folder = local_release_folder(release, models_dir) if models_dir is not None else None
        if folder is None:
            if not download:
                where = f" in {models_dir}" if models_dir is not None else ""
                raise ModelNotFoundError(f"{release.name} is not{where} and downloading is off. "
                                         f"{install_instructions(release, models_dir)}")
            folder = download_release(release.name, models_dir,
                                      progress=True if download_progress is None else download_progress)
        checkpoint = read_any(folder)
        checkpoint.metadata.setdefault("release", release.name)
    encoder, kind, _ = build_encoder(checkpoint.encoder)
    decoder, dec_config = build_decoder(checkpoint.decoder)
    arch = architecture_name(kind.name, dec_config)
    if release is not None and arch != release.architecture:
        from .errors import CheckpointError

        raise CheckpointError(f"The files for {release.name} hold a {arch} model, expected {release.architecture}: "
                              f"they were mixed up with another model's. Replace them with those from {release.url}.")
    declared = checkpoint.metadata.get("architecture")
    if declared and declared != arch:
        from .errors import CheckpointError

        raise CheckpointError(f"{source}: its metadata says {declared} but the weights are {arch}; the file was "
                              f"edited or mislabelled. Re-convert it with `python -m gsasr convert`.")
    info = ModelInfo(architecture=arch, release=checkpoint.metadata.get("release"), metadata=dict(checkpoint.metadata))
    info.metadata["architecture"] = arch
    return GSASRModel(encoder, decoder, info).to(device)
