"""``--decode gpu``: file bytes read by threads, JPEGs decoded in batches on the device, crops built there.

Per batch of ``k`` images:

1. Threads read each file and parse its header with PIL (no pixel decoding): a plain JPEG (RGB or grayscale, within
   ``--max-pixels`` and the aspect-ratio bound, ending in its EOI marker) keeps its bytes and EXIF orientation for
   the device decoder. Anything else (PNG, WebP, GIF, TIFF, BMP, CMYK JPEGs, truncated or unreadable files) goes
   through the CPU path's own decode and crops (:func:`cdul_rt.decode.load_crops`) in the thread, so it gets
   exactly the crops of ``--decode cpu`` or fails with the very same reason; only its crops wait for the batch,
   never the decoded image. A file that does not start like a JPEG is not read into memory first.
2. The JPEGs of the batch are decoded in one ``torchvision.io.decode_jpeg(list, device=...)`` call (nvJPEG on
   CUDA, libjpeg-turbo on CPU tensors). When that call fails, each JPEG is retried alone; one that still fails is
   handed to the CPU path, which either decodes it or gives the CPU path's failure reason. No other image of the
   batch is lost.
3. EXIF orientation is applied to the tensor (flips / transposes, as ``ImageOps.exif_transpose``),
   :func:`cdul_rt.devicecrops.crops_uint8` builds the crops on the device, the CPU path's crops join them in input
   order, and the batch is normalised there.

Decoding and cropping the next batches (one assembler thread) overlaps encoding the current one. Memory in flight
is bounded: at most ``prefetch + 1`` batches (JPEG files and other images' crops on the host, decoded images and
crops on the device), whatever the folder size.

The same code runs on CPU tensors (``device="cpu"``): that is how the tests check it on machines without a GPU.
The user-facing ``--decode gpu`` still refuses to run without CUDA; :data:`ON_CPU_TENSORS` is the internal choice
that runs this path on the CPU (tests, the dry run of ``bench/gpu_check.sh``).
"""

from __future__ import annotations

import io
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice
from pathlib import Path

import numpy as np

from cdul_rt.errors import CdulError
from cdul_rt.imageio import DEFAULT_MAX_PIXELS, MAX_ASPECT
from cdul_rt.preprocess import PreprocessConfig

DECODE_CHOICES = ("auto", "cpu", "gpu")
ON_CPU_TENSORS = "gpu-path-on-cpu"  # internal --decode value: the device path with CPU tensors (tests, dry runs)
EXIF_ORIENTATION = 0x0112
_JPEG_MODES = ("RGB", "L")  # what the device decoder turns into RGB like PIL does; CMYK & co. go to PIL


@dataclass
class Loaded:
    """One file after the reader thread: JPEG bytes for the device, or CPU-decoded pixels, or why it failed."""

    path: Path
    jpeg: bytearray | None = None
    orientation: int = 1
    crops: np.ndarray | None = None  # uint8 [1+g^2, S, S, 3]: the CPU path's own crops (not the whole image)
    error: str | None = None


@dataclass
class DeviceBatch:
    """The images of one batch that decoded (in input order) with their crops, and the ones that did not."""

    paths: list[Path]
    crops: object | None  # torch tensor [len(paths) * (1+g^2), 3, S, S], normalised, on the decode device
    failures: list[tuple[Path, str]] = field(default_factory=list)


# -- choosing the decode path ---------------------------------------------------------------------------------------

def check_decode(choice: str, device: str, jpeg_draft: bool = False) -> None:
    """Refuse an impossible ``--decode`` before any model is loaded (``gpu`` without CUDA fails here, at once)."""
    if choice not in (*DECODE_CHOICES, ON_CPU_TENSORS):
        raise CdulError(f"--decode must be one of {', '.join(DECODE_CHOICES)}, got {choice!r}")
    if choice != "gpu":
        return
    torch = _torch()
    if torch is None:
        raise CdulError("--decode gpu decodes JPEGs with torchvision's nvJPEG, but torch is not installed here; "
                        "install torch and torchvision (CUDA builds), or use --decode cpu")
    if not torch.cuda.is_available():
        raise CdulError("--decode gpu decodes JPEGs on a CUDA GPU (nvJPEG), but torch sees no CUDA device here; "
                        "use --decode cpu (or --decode auto, which picks cpu without CUDA)")
    if not device.startswith("cuda"):
        raise CdulError(f"--decode gpu decodes on the CUDA device that encodes, but --device is {device!r}; "
                        "add --device cuda (or use --decode cpu)")
    if jpeg_draft:
        raise CdulError("--jpeg-draft is a CPU decoding option (PIL's DCT-domain downscaling); "
                        "drop it with --decode gpu, or use --decode cpu")


def resolve_decode(choice: str, device: str, preprocess: PreprocessConfig, jpeg_draft: bool = False) -> str | None:
    """The torch device the JPEGs are decoded on, or ``None`` for the CPU path (worker processes + PIL).

    ``auto`` is the GPU path when ``device`` is CUDA and nvJPEG decodes there, else the CPU path: without CUDA,
    ``auto`` is exactly ``cpu``.
    """
    from cdul_rt.devicecrops import check_interpolation

    check_decode(choice, device, jpeg_draft)
    if choice == "cpu":
        return None
    if choice == ON_CPU_TENSORS:
        check_interpolation(preprocess)
        return "cpu"
    if choice == "auto":
        if not device.startswith("cuda") or jpeg_draft or preprocess.interpolation not in ("bicubic", "bilinear"):
            return None
        torch = _torch()  # None in a torch-free install (onnxruntime / TensorRT on a GPU): the CPU path
        return device if torch is not None and torch.cuda.is_available() and nvjpeg_error(device) is None else None
    check_interpolation(preprocess)
    why = nvjpeg_error(device)
    if why is not None:
        raise CdulError(f"--decode gpu: torchvision's nvJPEG decoder does not work on {device} ({why}); "
                        "use --decode cpu")
    return device


def _torch():
    """torch, or ``None`` where it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


@lru_cache(maxsize=None)
def nvjpeg_error(device: str) -> str | None:
    """Why a small JPEG cannot be decoded on ``device`` (``None``: it can)."""
    buf = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 90)).save(buf, "JPEG")
    try:
        (t,) = decode_jpegs([buf.getvalue()], device)
        return None if tuple(t.shape) == (3, 16, 16) else f"decoded shape {tuple(t.shape)}"
    except Exception as exc:  # noqa: BLE001 - any failure means: not usable here
        return f"{type(exc).__name__}: {str(exc)[:200]}"


# -- reading (threads) ----------------------------------------------------------------------------------------------

def read_file(path: Path) -> bytearray | None:
    """The whole file in a writable buffer (torch takes it without a copy or a warning); ``None`` when it does not
    start like a JPEG (it is left to the CPU path unread: a large TIFF is not held in memory twice)."""
    with open(path, "rb") as f:
        if f.read(3) != b"\xff\xd8\xff":
            return None
        size = f.seek(0, 2)
        f.seek(0)
        buf = bytearray(size)
        if f.readinto(buf) != size:
            raise OSError(f"{path} changed size while being read")
        return buf


def jpeg_header(data: bytes | bytearray, max_pixels: int) -> int | None:
    """EXIF orientation (1-8) of a JPEG the device decoder takes, or ``None`` to leave the file to the CPU path.

    Only the header is parsed (PIL reads up to the first scan, decodes nothing). A file that does not end in the
    EOI marker may be truncated: the CPU path decides (PIL refuses truncated files; nvJPEG could pad them).
    """
    from PIL import Image

    if data[:3] != b"\xff\xd8\xff" or bytes(data[-64:]).rstrip(b"\x00\r\n ")[-2:] != b"\xff\xd9":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a decompression-bomb warning: the size check below decides
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size  # over --max-pixels or the aspect bound: the CPU path refuses it, with its reason
                if (im.format != "JPEG" or im.mode not in _JPEG_MODES or w * h > max_pixels
                        or max(w, h) > MAX_ASPECT * max(1, min(w, h))):
                    return None
                orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - unreadable header: the CPU path gives the reason
        return None
    return orientation if orientation in range(1, 9) else 1


def load_cpu(path: Path, max_pixels: int, grid: int, cfg: PreprocessConfig) -> Loaded:
    """The CPU path's decode and crops (:func:`cdul_rt.decode.load_crops`): the same crops, or the same failure
    reason, as ``--decode cpu``. Only the crops wait for the batch, never the decoded image (bounded memory)."""
    from cdul_rt.decode import load_crops

    item = load_crops(path, grid, cfg, max_pixels)
    return Loaded(path, crops=item.crops, error=item.error)


def load(path: Path, max_pixels: int, grid: int, cfg: PreprocessConfig) -> Loaded:
    """Run in a reader thread: JPEG bytes + orientation for the device, else the CPU path's crops or reason."""
    try:
        data = read_file(path)
    except OSError:
        data = None  # the CPU path words the reason
    orientation = jpeg_header(data, max_pixels) if data else None
    if orientation is None:
        return load_cpu(path, max_pixels, grid, cfg)
    return Loaded(path, jpeg=data, orientation=orientation)


# -- decoding (the device) ------------------------------------------------------------------------------------------

def decode_jpegs(datas: list, device: str) -> list:
    """uint8 ``[3, H, W]`` RGB tensors on ``device`` from JPEG bytes, in one batched decoder call; raises on any
    bad file (torchvision returns nothing partial)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision.*")
        tensors = [torch.frombuffer(d if isinstance(d, bytearray) else bytearray(d), dtype=torch.uint8)
                   for d in datas]
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))


def orient(image, orientation: int):
    """Apply EXIF orientation to a ``[C, H, W]`` tensor exactly as PIL's ``ImageOps.exif_transpose``."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1, -2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-1, -2)
    if orientation == 6:  # PIL ROTATE_270: 90 degrees clockwise
        return image.transpose(-1, -2).flip(-1)
    if orientation == 7:
        return image.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:  # PIL ROTATE_90: 90 degrees counter-clockwise
        return image.transpose(-1, -2).flip(-2)
    return image


def _decode_all(items: list[Loaded], device: str, max_pixels: int, grid: int,
                cfg: PreprocessConfig) -> dict[int, object]:
    """Index -> decoded tensor for the JPEG items; items that fail alone are replaced by the CPU path's result."""
    index = [i for i, it in enumerate(items) if it.jpeg is not None]
    if not index:
        return {}
    try:
        return dict(zip(index, decode_jpegs([items[i].jpeg for i in index], device)))
    except Exception:  # noqa: BLE001 - one bad file fails the whole call: retry one by one
        pass
    out = {}
    for i in index:
        try:
            (out[i],) = decode_jpegs([items[i].jpeg], device)
        except Exception:  # noqa: BLE001
            items[i] = load_cpu(items[i].path, max_pixels, grid, cfg)
    return out


def assemble(items: list[Loaded], grid: int, cfg: PreprocessConfig, device: str,
             max_pixels: int = DEFAULT_MAX_PIXELS, dtype=None) -> DeviceBatch:
    """Decode the JPEGs of one batch on ``device``, build their crops there, join the CPU path's crops of the
    other images (in input order)."""
    import torch

    from cdul_rt.devicecrops import crops_uint8, normalize, view_plan

    decoded = _decode_all(items, device, max_pixels, grid, cfg)
    images, plans, paths, failures = [], [], [], []
    sources = []  # per kept image: ("device", index into images) or ("cpu", its uint8 crops)
    for i, it in enumerate(items):
        if i in decoded:
            image = orient(decoded[i], it.orientation)
            try:
                plans.append(view_plan(int(image.shape[-1]), int(image.shape[-2]), grid, cfg))
            except CdulError as exc:  # e.g. too small for the grid: the CPU path's words
                failures.append((it.path, str(exc)))
                continue
            sources.append(("device", len(images)))
            images.append(image)
        elif it.crops is not None:
            sources.append(("cpu", it.crops))
        else:
            failures.append((it.path, it.error or "unknown error"))
            continue
        paths.append(it.path)
    if not paths:
        return DeviceBatch(paths, None, failures)
    on_device = crops_uint8(images, plans, cfg) if images else None
    if len(images) == len(paths):  # all decoded on the device: no reassembly
        return DeviceBatch(paths, normalize(on_device, cfg, dtype), failures)
    per = 1 + grid * grid
    parts = [on_device[value * per:(value + 1) * per] if kind == "device"
             else torch.from_numpy(value).permute(0, 3, 1, 2).to(device, non_blocking=True) for kind, value in sources]
    return DeviceBatch(paths, normalize(torch.cat(parts), cfg, dtype), failures)


def device_batches(paths: Iterable[Path], grid: int, cfg: PreprocessConfig, device: str, batch_size: int = 64,
                   max_pixels: int = DEFAULT_MAX_PIXELS, threads: int = 8, prefetch: int = 2,
                   dtype=None) -> Iterator[DeviceBatch]:
    """One :class:`DeviceBatch` per ``batch_size`` paths, in order.

    While the caller encodes one batch, the next ``prefetch`` are read (and non-JPEGs decoded) by ``threads``
    reader threads and assembled (device decode, crops) by one assembler thread, in order, on the same device
    stream: decoding overlaps encoding, and at most ``prefetch + 1`` batches of files and crops exist at once.
    """
    from cdul_rt.devicecrops import check_interpolation

    check_interpolation(cfg)
    it = iter(paths)
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="cdul-read") as readers, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdul-assemble") as assembler:
        def build(reads: list) -> DeviceBatch:
            return assemble([f.result() for f in reads], grid, cfg, device, max_pixels, dtype)

        def submit() -> None:
            chunk = list(islice(it, batch_size))
            if chunk:
                pending.append(assembler.submit(build, [readers.submit(load, p, max_pixels, grid, cfg)
                                                        for p in chunk]))

        try:
            for _ in range(prefetch + 1):
                submit()
            while pending:
                yield pending.popleft().result()
                submit()  # after the batch is consumed: (prefetch + 1) batches at most, this one included
        finally:  # the caller stopped early (an error, Ctrl-C): drop the read-ahead instead of finishing it
            for future in pending:
                future.cancel()
            readers.shutdown(wait=False, cancel_futures=True)


def infer_crops(runner, crops, text_embeddings: np.ndarray) -> dict[str, np.ndarray]:
    """Scores for a crop tensor: straight into the torch runner on its device; other runtimes take host float32."""
    if hasattr(runner, "infer_tensor"):
        return runner.infer_tensor(crops, text_embeddings)
    return runner.infer({"crops": crops.float().cpu().numpy(), "text_embeddings": text_embeddings})


def label_batches(cfg, session, labeler, device: str, paths: Iterable[Path]) -> Iterator[tuple[DeviceBatch, dict]]:
    """``label``'s device path: each batch of ``cfg.batch_size`` files with the labeler's outputs for its images
    (``{}`` when none of them decoded). Crops are made in the encoder's dtype (fp16 on the GPU) on ``device``.
    ``labeler``: the :class:`cdul_rt.Labeler` the CPU path scores with too (:meth:`~cdul_rt.Labeler.score_tensor`)."""
    import torch

    runner = labeler.runner
    dtype = getattr(runner, "dtype", None) if hasattr(runner, "infer_tensor") else None
    threads = max(4, 2 * cfg.workers)  # file reads and PIL decodes of non-JPEGs release the GIL
    try:
        for batch in device_batches(paths, cfg.grid, session.preprocess, device, cfg.batch_size, cfg.max_pixels,
                                    threads=threads, dtype=dtype):
            out = labeler.score_tensor(batch.crops) if batch.paths else {}
            yield batch, out
    except torch.cuda.OutOfMemoryError as exc:  # decoded images, crops and read-ahead batches all live on the GPU
        raise CdulError(f"the GPU ran out of memory on a batch of {cfg.batch_size} images ({str(exc)[:160]}); "
                        "use a smaller --batch-size, or --decode cpu (rows written so far are kept: rerun the "
                        "same command to resume)") from None
