"""The CPU fast path: --runtime auto's choice on faked hardware, JPEG draft decoding, normalisation, compile."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cdul_rt.engines import auto
from cdul_rt.engines.auto import Candidate, Capabilities, candidates, parse_cpuinfo, rank
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


def keys(cands: list[Candidate]) -> list[str]:
    return [c.key for c in cands]


def test_candidates_follow_the_hardware():
    bf16_ort = Capabilities(frozenset({"avx512_bf16", "avx512_vnni"}), onnxruntime=True)
    assert keys(candidates(bf16_ort)) == ["torch/bf16/cpu", "onnxruntime/int8/cpu", "torch/fp32/cpu",
                                          "onnxruntime/fp32/cpu", "onnxruntime/fp16/cpu"]
    plain = Capabilities(frozenset({"avx2"}))
    assert keys(candidates(plain)) == ["torch/fp32/cpu"]  # no bf16 units: bf16 would be emulated, slower
    gpu = Capabilities(frozenset(), cuda=True, tensorrt=True)
    assert keys(candidates(gpu))[:2] == ["tensorrt/fp16/cuda", "torch/fp16/cuda"]
    assert keys(candidates(bf16_ort, precision="int8")) == ["onnxruntime/int8/cpu"]
    with pytest.raises(CdulError, match="no runtime for --precision bf16"):
        candidates(plain, precision="bf16")


def test_rank_puts_measured_candidates_first_fastest_first():
    cands = candidates(Capabilities(frozenset({"avx512_bf16", "avx512_vnni"}), onnxruntime=True))
    ranked = rank(cands, {"onnxruntime/int8/cpu": 9.0, "torch/bf16/cpu": 7.0, "elsewhere/x/cpu": 99.0})
    assert keys(ranked)[:3] == ["onnxruntime/int8/cpu", "torch/bf16/cpu", "torch/fp32/cpu"]
    assert keys(rank(cands, {})) == keys(cands)


def _label_cfg(folder, out, tiny_config, **kw):
    from cdul_rt.pipeline import LabelConfig

    return LabelConfig(input=folder, out=out, classes="voc", model=str(tiny_config), pretrained="none",
                       workers=0, runtime="auto", precision="auto", progress=False, **kw)


def test_auto_picks_bf16_when_it_passes_parity_and_falls_back_when_not(tmp_path, image_folder, tiny_config,
                                                                         monkeypatch):
    from cdul_rt.pipeline import label_folder

    monkeypatch.setattr(auto, "detect", lambda: Capabilities(frozenset({"avx512_bf16"})))
    monkeypatch.setattr(auto, "measured", lambda caps, model: {})
    cfg = _label_cfg(image_folder, tmp_path / "a.jsonl", tiny_config)
    summary = label_folder(cfg)
    from cdul_rt.labelfile import read_meta

    assert summary.labeled == 12 and read_meta(cfg.out)["config"]["precision"] == "bf16"
    monkeypatch.setattr(auto, "PARITY_TOL", 0.0)  # nothing but fp32 itself is within 0 of fp32
    from cdul_rt.vocab import load_vocabulary

    session = auto.open_labeler(cfg, load_vocabulary("voc"))
    assert session.precision == "fp32" and session.auto_choice["chosen"] == "torch/fp32/cpu"
    assert session.auto_choice["skipped"][0].startswith("torch/bf16/cpu: S_final differs")


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
