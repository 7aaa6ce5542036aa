"""uint8 crops go to the runner, which normalises on its device: scores identical to the float32 path made before the
change (a stored label file), chunked device feeding, input checks, per-image memory bounds, default batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cdul_rt.errors import CdulError
from cdul_rt.preprocess import PreprocessConfig, normalize_batch

REF = Path(__file__).parent / "data" / "pool_ref"


def test_label_scores_equal_the_label_file_made_before_the_change(tmp_path):
    """tests/data/pool_ref/before.npz was made by the float32-on-the-host pipeline (see its README)."""
    from cdul_rt.labelfile import read_label_file
    from cdul_rt.pipeline import LabelConfig, label_folder

    before = read_label_file(REF / "before.npz")
    for workers, batch in ((2, 4), (0, 5)):
        out = tmp_path / f"after_{workers}.npz"
        label_folder(LabelConfig(input=REF / "images", out=out, model="cdul-tiny", classes="synth", save_parts=True,
                                 workers=workers, batch_size=batch, progress=False, runtime="torch"))  # as made
        after = read_label_file(out)
        assert after.paths == before.paths and len(after.paths) == 6
        spread = float(before.scores.max() - before.scores.min())
        assert spread > 0.1  # the scores differ between classes, so equality below means something
        assert np.abs(after.scores - before.scores).max() <= 1e-6
        for part in ("global", "aggregate"):
            assert np.abs(after.parts[part] - before.parts[part]).max() <= 1e-6


@pytest.fixture(scope="module")
def tiny_bundle(tiny_config):
    from cdul_rt.models import load_clip
    from cdul_rt.presets import resolve_model

    return load_clip(resolve_model(str(tiny_config), "none"))


def _crops(n_images: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (10, size, size, 3), dtype=np.uint8) for _ in range(n_images)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_torch_uint8_path_is_bit_identical_to_host_normalisation(tiny_bundle, precision):
    from cdul_rt.engines.torch.runner import TorchLabelerRunner

    bundle, cfg = tiny_bundle, tiny_bundle.preprocess
    parts = _crops(5, cfg.size)
    text = np.random.default_rng(1).standard_normal((7, 32)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    with TorchLabelerRunner(bundle, grid=3, precision=precision) as r:
        ref = r.infer({"crops": normalize_batch(np.concatenate(parts), cfg), "text_embeddings": text})
        from_list = r.infer_uint8(parts, text, cfg)
        from_array = r.infer_uint8(np.concatenate(parts), text, cfg)
    for k in ref:
        np.testing.assert_array_equal(from_list[k], ref[k])
        np.testing.assert_array_equal(from_array[k], ref[k])


def test_chunked_device_feeding_equals_host_normalisation():
    from cdul_rt.engines.torch.staging import DeviceFeeder, chunk_rows

    assert chunk_rows(640, 10, overlap=False) == [(0, 640)]
    assert chunk_rows(640, 10, overlap=True) == [(0, 160), (160, 320), (320, 480), (480, 640)]  # 4 x 16 images
    assert chunk_rows(200, 10, overlap=True) == [(0, 200)]  # 20 images: one chunk of >= 16 images only
    assert chunk_rows(330, 10, overlap=True) == [(0, 170), (170, 330)]  # whole images per chunk
    assert chunk_rows(0, 10, overlap=True) == []
    import torch

    cfg = PreprocessConfig(size=16)
    parts = _crops(40, 16, seed=3)
    parts.insert(7, parts.pop(7)[:10])
    ref = normalize_batch(np.concatenate(parts), cfg)
    feeder = DeviceFeeder("cpu", cfg, overlap=True)  # the CUDA chunking, on CPU tensors
    chunks = list(feeder.chunks(parts, rows_per_item=10))
    assert len(chunks) == 2
    np.testing.assert_array_equal(torch.cat(chunks).numpy(), ref)
    # the normalisation the CUDA path runs on the device, here on a CPU tensor
    u8 = torch.from_numpy(np.concatenate(parts)).permute(0, 3, 1, 2).contiguous()
    np.testing.assert_array_equal(feeder.normalize(u8).numpy(), ref)


def test_uint8_input_is_checked(tiny_bundle):
    from cdul_rt.engines.torch.runner import TorchLabelerRunner

    s = tiny_bundle.preprocess.size
    text = np.zeros((3, 32), np.float32)
    r = TorchLabelerRunner(tiny_bundle, grid=3)
    with pytest.raises(CdulError, match="not active"):
        r.infer_uint8(_crops(1, s), text, tiny_bundle.preprocess)
    with r:
        with pytest.raises(CdulError, match="uint8"):
            r.infer_uint8([np.zeros((10, s, s, 3), np.float32)], text, tiny_bundle.preprocess)
        with pytest.raises(CdulError, match=f"Nx{s}x{s}x3"):
            r.infer_uint8([np.zeros((10, s + 1, s + 1, 3), np.uint8)], text, tiny_bundle.preprocess)
        with pytest.raises(CdulError, match="whole images of 10 crops"):
            r.infer_uint8([np.zeros((9, s, s, 3), np.uint8)], text, tiny_bundle.preprocess)


# -- memory bounds per image ----------------------------------------------------------------------------------------
def test_sliver_png_is_refused_before_decoding(tmp_path):
    from PIL import Image

    from cdul_rt.decode import load_crops

    sliver = tmp_path / "sliver.png"
    Image.new("RGB", (3, 200000)).save(sliver)
    assert sliver.stat().st_size < 8000  # a few KB on disk...
    item = load_crops(sliver, 3, PreprocessConfig())  # ...needing a 224 x 14.9M px view: refused from its header
    assert item.crops is None and "aspect ratio of 66667:1" in item.error and "100:1" in item.error
    ok = tmp_path / "strip.png"
    Image.new("RGB", (3, 300)).save(ok)  # exactly 100:1 still decodes
    assert load_crops(ok, 3, PreprocessConfig(size=32)).crops.shape == (10, 32, 32, 3)


def test_grid_is_capped_with_a_clear_error(tmp_path, tiny_config):
    from click.testing import CliRunner

    from cdul_rt.cli import main
    from cdul_rt.crops import MAX_GRID, grid_boxes

    assert len(grid_boxes(800, 600, MAX_GRID)) == MAX_GRID ** 2
    with pytest.raises(CdulError, match=f"above the maximum of {MAX_GRID}"):
        grid_boxes(800, 600, MAX_GRID + 1)
    (tmp_path / "imgs").mkdir()
    r = CliRunner().invoke(main, ["label", str(tmp_path / "imgs"), "--model", str(tiny_config), "--pretrained",
                                  "none", "--grid", "100", "--out", str(tmp_path / "o.jsonl"), "-q"])
    assert r.exit_code != 0 and "--grid 100 is above the maximum of 8" in r.output and "10001 crops" in r.output
    assert "Traceback" not in r.output


def test_default_batch_fills_a_gpu_and_keeps_the_cpu_default(tmp_path):
    from cdul_rt.pipeline import LabelConfig

    assert LabelConfig(input=tmp_path, out=tmp_path / "o.jsonl", device="cuda").batch_size == 64
    assert LabelConfig(input=tmp_path, out=tmp_path / "o.jsonl", device="cuda:1").batch_size == 64
    assert LabelConfig(input=tmp_path, out=tmp_path / "o.jsonl", device="GPU").batch_size == 64
    assert LabelConfig(input=tmp_path, out=tmp_path / "o.jsonl").batch_size == 8
    assert LabelConfig(input=tmp_path, out=tmp_path / "o.jsonl", device="cuda", batch_size=3).batch_size == 3


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (bench/gpu_check.sh runs it)")
def test_cuda_pinned_chunked_uploads_normalise_bit_identically(tiny_bundle):
    """On a GPU: the pinned buffer, copy stream and chunked uploads give the host's normalised crops bit for bit,
    across two calls (the staging buffer is reused), and labeler outputs match the float32 path."""
    import torch

    from cdul_rt.engines.torch.runner import TorchLabelerRunner
    from cdul_rt.engines.torch.staging import DeviceFeeder

    cfg = tiny_bundle.preprocess
    feeder = DeviceFeeder("cuda", cfg)
    for seed in (0, 1):  # the second call refills the same pinned buffer
        parts = _crops(40, cfg.size, seed)  # 40 images: 2 chunks of 20
        chunks = list(feeder.chunks(parts, rows_per_item=10))
        assert len(chunks) == 2 and chunks[0].device.type == "cuda"
        np.testing.assert_array_equal(torch.cat(chunks).cpu().numpy(), normalize_batch(np.concatenate(parts), cfg))
    text = np.random.default_rng(1).standard_normal((7, 32)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    parts = _crops(40, cfg.size, 2)
    with TorchLabelerRunner(tiny_bundle, grid=3, device="cuda") as r:
        ref = r.infer({"crops": normalize_batch(np.concatenate(parts), cfg), "text_embeddings": text})
        got = r.infer_uint8(parts, text, cfg)
    for k in ref:  # the encoder saw 2 chunks instead of 1 batch: GEMM shapes differ, so allow float rounding
        np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-5)
