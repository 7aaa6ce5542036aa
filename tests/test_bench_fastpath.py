"""The CPU fast path: the default rule (= --runtime auto) on faked hardware, JPEG draft decoding, normalisation, compile."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cdul_rt.engines import auto
from cdul_rt.engines.auto import Capabilities, parse_cpuinfo
from cdul_rt.errors import CdulError
from cdul_rt.imageio import draft_size, min_tile_side, open_rgb
from cdul_rt.preprocess import PreprocessConfig, normalize_batch

CPUINFO = """processor\t: 0
model name\t: Test CPU 9000
flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni amx_tile
processor\t: 1
flags\t\t: fpu
"""


def test_parse_cpuinfo_reads_the_first_processor():
    flags, name = parse_cpuinfo(CPUINFO)
    assert name == "Test CPU 9000" and {"avx512_bf16", "avx512_vnni"} <= flags and "fpu" in flags
    caps = Capabilities(flags, name)
    assert caps.bf16 and caps.int8
    assert not Capabilities(frozenset({"avx2", "fma"})).bf16


CPU_ORT = Capabilities(frozenset({"avx512_bf16", "avx512_vnni"}), onnxruntime=True)
CPU_TORCH_ONLY = Capabilities(frozenset({"avx512_bf16", "avx512_vnni"}))
GPU_ALL = Capabilities(frozenset(), cuda=True, onnxruntime=True, tensorrt=True, onnxruntime_cuda=True)
GPU_ORT = Capabilities(frozenset(), cuda=True, onnxruntime=True, onnxruntime_cuda=True)
GPU_TORCH = Capabilities(frozenset(), cuda=True, onnxruntime=True)  # CPU onnxruntime only: no CUDA provider


def key(runtime=None, precision=None, device="cpu", caps=CPU_ORT, engine_dir=None) -> str:
    return auto.choose(runtime, precision, device, engine_dir, caps).key


def test_default_rule_is_the_fastest_path_within_the_quality_margin():
    # CPU: exact fp32 (bf16 and int8 change label sets beyond the margin); onnxruntime when installed
    assert key() == key("auto", "auto") == "onnxruntime/fp32/cpu"
    assert key(caps=CPU_TORCH_ONLY) == "torch/fp32/cpu"
    # CUDA: the fp16 graph (within the margin) on the fastest graph runtime installed; torch stays exact
    assert key(device="cuda") == "torch/fp32/cuda"  # CPU onnxruntime, no CUDA provider, no TensorRT
    assert key(device="cuda", caps=GPU_ALL) == "tensorrt/fp16/cuda"
    assert key(device="cuda", caps=GPU_ORT) == "onnxruntime/fp16/cuda"
    assert key(device="cuda:1", caps=GPU_TORCH) == "torch/fp32/cuda:1"
    assert key(device="GPU", caps=GPU_ORT) == "onnxruntime/fp16/cuda"  # the runtimes' gpu alias is CUDA here too
    for runtime, precision in (("onnxruntime", "fp32"), ("tensorrt", "fp16"), ("torch", "fp32")):
        assert auto.Candidate(runtime, precision).within_margin
    for runtime, precision in (("torch", "bf16"), ("onnxruntime", "int8"), ("torch", "fp16")):
        assert not auto.Candidate(runtime, precision).within_margin


def test_given_flags_are_kept_and_complete_each_other():
    assert key("torch") == "torch/fp32/cpu" and key("onnxruntime", device="cuda", caps=GPU_ORT).endswith("fp16/cuda")
    assert key(precision="bf16") == "torch/bf16/cpu"
    assert key(precision="int8") == "onnxruntime/int8/cpu" and key(precision="fp16") == "onnxruntime/fp16/cpu"
    assert key("torch", "bf16", caps=CPU_TORCH_ONLY) == "torch/bf16/cpu"
    with pytest.raises(CdulError, match="pip install 'cdul-rt\\[onnx\\]'"):
        key(precision="int8", caps=CPU_TORCH_ONLY)
    with pytest.raises(CdulError, match="--precision must be one of"):
        key(precision="fp8")


def test_missing_precision_comes_from_the_engine_dir(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from cdul_rt.artifacts import manifest

    monkeypatch.setattr(manifest, "read_manifest", lambda folder: SimpleNamespace(precision="int8"))
    assert key(engine_dir=tmp_path) == "onnxruntime/int8/cpu"
    assert key("torch", engine_dir=tmp_path) == "torch/fp32/cpu"  # torch ignores artifact folders
    assert key(precision="fp32", engine_dir=tmp_path) == "onnxruntime/fp32/cpu"  # given: kept (the loader checks)


def _label_cfg(folder, out, tiny_config, **kw):
    from cdul_rt.pipeline import LabelConfig

    return LabelConfig(input=folder, out=out, classes="voc", model=str(tiny_config), pretrained="none",
                       workers=0, progress=False, **kw)


def test_label_config_cli_and_runtime_auto_take_the_same_path(tmp_path, image_folder, tiny_config, monkeypatch):
    from click.testing import CliRunner

    from cdul_rt.cli import main
    from cdul_rt.labelfile import read_meta
    from cdul_rt.pipeline import label_folder

    expected = auto.choose()
    python = _label_cfg(image_folder, tmp_path / "py.jsonl", tiny_config)
    assert (python.runtime, python.precision) == (expected.runtime, expected.precision)
    explicit = _label_cfg(image_folder, tmp_path / "auto.jsonl", tiny_config, runtime="auto", precision="auto")
    assert (explicit.runtime, explicit.precision) == (python.runtime, python.precision)
    label_folder(python)
    r = CliRunner().invoke(main, ["label", str(image_folder), "--out", str(tmp_path / "cli.jsonl"), "--model",
                                  str(tiny_config), "--pretrained", "none", "--classes", "voc", "--workers", "0",
                                  "-q"])
    assert r.exit_code == 0, r.output
    meta = [read_meta(tmp_path / f)["config"] for f in ("py.jsonl", "cli.jsonl")]
    assert [(m["runtime"], m["precision"]) for m in meta] == [(expected.runtime, expected.precision)] * 2


def test_normalize_batch_is_bit_identical_to_the_plain_formula():
    cfg = PreprocessConfig()
    crops = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    plain = (crops.astype(np.float32) / np.float32(255.0) - np.asarray(cfg.mean, np.float32)) \
        / np.asarray(cfg.std, np.float32)
    ours = normalize_batch(crops, cfg)
    assert ours.shape == (3, 3, 16, 16) and ours.flags.c_contiguous
    assert np.array_equal(ours, plain.transpose(0, 3, 1, 2))


def test_draft_size_keeps_every_tile_at_least_the_input_size():
    assert draft_size(640, 480, 3, 224) is None  # tiles are already smaller than 224
    assert draft_size(4000, 3000, 3, 224) == (1000, 750)
    for w, h in [(4000, 3000), (3001, 2000), (1352, 1013), (6000, 700), (2017, 1999)]:
        size = draft_size(w, h, 3, 224)
        if size is None:
            assert min_tile_side(-(-w // 2), -(-h // 2), 3) < 224
            continue
        assert min_tile_side(*size, 3) >= 224
        scale = round(w / size[0])
        if scale < 8:  # the next downscale would cut a tile below 224
            assert min_tile_side(-(-w // (2 * scale)), -(-h // (2 * scale)), 3) < 224


def _jpeg(path, w, h):
    from cdul_rt.bench.images import photo_like

    photo_like(w, h, np.random.default_rng(3)).save(path, "JPEG", quality=90)
    return path


def test_open_rgb_draft_decodes_large_jpegs_smaller_only(tmp_path):
    big = _jpeg(tmp_path / "big.jpg", 1200, 900)
    assert open_rgb(big).size == (1200, 900)
    img = open_rgb(big, draft=(3, 64))
    assert img.size == (300, 225) and img.mode == "RGB"  # 1/4: tiles 100x75; 1/8 would give 50x37
    assert min_tile_side(*img.size, 3) >= 64
    assert open_rgb(big, draft=(3, 224)).size == (1200, 900)  # no downscale keeps 224 px tiles
    png = tmp_path / "big.png"
    Image.open(big).save(png)
    assert open_rgb(png, draft=(3, 64)).size == (1200, 900)  # only JPEG decodes in the DCT domain


def test_draft_crops_stay_close_to_full_decoding(tmp_path):
    from cdul_rt.decode import load_crops

    big = _jpeg(tmp_path / "big.jpg", 1200, 900)
    cfg = PreprocessConfig(size=64)
    full, draft = load_crops(big, 3, cfg), load_crops(big, 3, cfg, jpeg_draft=True)
    assert full.crops.shape == draft.crops.shape == (10, 64, 64, 3)
    diff = np.abs(full.crops.astype(np.int16) - draft.crops.astype(np.int16))
    assert diff.mean() < 4 and not np.array_equal(full.crops, draft.crops)


def test_jpeg_draft_is_recorded_only_when_on(tmp_path, tiny_config):
    from cdul_rt.labelfile import read_meta
    from cdul_rt.pipeline import label_folder

    folder = tmp_path / "imgs"
    folder.mkdir()
    _jpeg(folder / "a.jpg", 800, 600)
    base = dict(runtime="torch", precision="fp32")
    for draft in (False, True):
        cfg = _label_cfg(folder, tmp_path / f"{draft}.jsonl", tiny_config, jpeg_draft=draft)
        cfg.runtime, cfg.precision = base["runtime"], base["precision"]
        assert label_folder(cfg).labeled == 1
        assert read_meta(cfg.out)["config"].get("jpeg_draft") is (True if draft else None)


@pytest.mark.slow
def test_compiled_runner_pads_the_last_batch_and_matches_eager(tiny_config):
    from cdul_rt.engines.torch.runner import TorchLabelerRunner
    from cdul_rt.models import load_clip
    from cdul_rt.presets import resolve_model

    bundle = load_clip(resolve_model(str(tiny_config), "none"))
    s = bundle.preprocess.size
    crops = np.random.default_rng(0).standard_normal((30, 3, s, s)).astype(np.float32)
    text = np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32)
    eager = TorchLabelerRunner(bundle, precision="bf16")
    compiled = TorchLabelerRunner(bundle, precision="bf16", compile=True)
    with eager, compiled:
        first = compiled.infer({"crops": crops[:20], "text_embeddings": text})  # fixes the graph at 20 crops
        last = compiled.infer({"crops": crops[20:], "text_embeddings": text})  # 10 crops: padded to 20
        ref = eager.infer({"crops": crops, "text_embeddings": text})
    got = np.concatenate([first["S_final"], last["S_final"]])
    assert compiled._fixed_batch == 20
    np.testing.assert_allclose(got, ref["S_final"], atol=1e-2)
