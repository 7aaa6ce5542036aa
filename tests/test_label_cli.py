"""`cdul-rt label` end to end with a tiny random CLIP: outputs, failures, resume (also after kill -9), refusal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cdul_rt.cli import main
from cdul_rt.engines.auto import choose
from cdul_rt.labelfile import read_label_file

from conftest import make_broken, make_images


def run_cli(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def label_args(folder: Path, out: Path, tiny_config: Path, *extra: str) -> list[str]:
    return ["label", str(folder), "--model", str(tiny_config), "--pretrained", "none", "--classes", "voc",
            "--out", str(out), "-q", "--workers", "0", *extra]


def test_label_jsonl_with_failures_and_meta(tmp_path, image_folder, tiny_config):
    broken = make_broken(image_folder)
    out = tmp_path / "labels.jsonl"
    r = run_cli(*label_args(image_folder, out, tiny_config, "--save-parts", "--top-k", "2"))
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and len({r["path"] for r in rows}) == 12
    assert any(r["path"].startswith("sub/") for r in rows)  # relative to the input folder, recursive
    row = rows[0]
    assert set(row) == {"path", "scores", "labels", "global", "aggregate"}
    assert len(row["scores"]) == 20 and len(row["labels"]) == 2
    assert row["labels"][0] == max(row["scores"], key=row["scores"].get)
    # S_final >= both parts element-wise with lambda = 1 (it is their max)
    for c in row["scores"]:
        assert row["scores"][c] == pytest.approx(max(row["global"][c], row["aggregate"][c]), abs=1e-6)
    failures = [json.loads(line) for line in (tmp_path / "labels.jsonl.failures.jsonl").read_text().splitlines()]
    assert sorted(f["path"] for f in failures) == sorted(broken)
    assert "3 images could not be read" in r.output
    meta = json.loads((tmp_path / "labels.jsonl.meta.json").read_text())
    cfg = meta["config"]
    from cdul_rt.vocab import DEFAULT_TEMPLATE, load_vocabulary

    assert cfg["classes"] == list(load_vocabulary("voc").classes) and cfg["template"] == DEFAULT_TEMPLATE
    assert (cfg["grid"], cfg["zeta"], cfg["lambda"], cfg["mode"], cfg["precision"]) == (3, 0.3, 1.0, "cdul", "fp32")
    assert cfg["weights_hash"] == "random-seed0" and cfg["top_k"] == 2 and cfg["save_parts"] is True
    assert meta["version"] and meta["status"] == "complete" and cfg["runtime"] == choose().runtime
    assert meta["last_run"]["labeled"] == 12 and meta["last_run"]["failed"] == 3


def test_all_formats_hold_the_same_scores(tmp_path, image_folder, tiny_config):
    tables = {}
    for ext in ("jsonl", "csv", "parquet", "npz"):
        out = tmp_path / f"l.{ext}"
        assert run_cli(*label_args(image_folder, out, tiny_config, "--save-parts")).exit_code == 0
        assert not (tmp_path / f"l.{ext}.journal.jsonl").exists()
        tables[ext] = read_label_file(out)
    ref = tables["jsonl"]
    assert ref.scores.shape == (12, 20)
    for ext, t in tables.items():
        assert t.paths == ref.paths and t.classes == ref.classes, ext
        np.testing.assert_allclose(t.scores, ref.scores, atol=1e-6, err_msg=ext)
        np.testing.assert_allclose(t.parts["global"], ref.parts["global"], atol=1e-6, err_msg=ext)


@pytest.mark.slow
def test_batching_does_not_change_scores(tmp_path, image_folder, tiny_config):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run_cli(*label_args(image_folder, a, tiny_config, "--batch-size", "1"))
    run_cli(*label_args(image_folder, b, tiny_config, "--batch-size", "5", "--workers", "2"))
    np.testing.assert_allclose(read_label_file(a).scores, read_label_file(b).scores, atol=1e-5)


@pytest.mark.slow
def test_fused_batch_matches_per_crop_open_clip_reference(tmp_path, tiny_config):
    """Our fused 10-crop path == the loop a researcher writes with open_clip's own preprocess, per crop."""
    import torch

    from cdul_rt.crops import grid_boxes
    from cdul_rt.aggregation import aggregate_np
    from cdul_rt.labeling import class_scores_np
    from cdul_rt.models import load_clip
    from cdul_rt.presets import resolve_model
    from cdul_rt.vocab import load_vocabulary
    import open_clip

    folder = tmp_path / "imgs"
    paths = make_images(folder, 3, sizes=((45, 71),))
    out = tmp_path / "o.jsonl"
    run_cli(*label_args(folder, out, tiny_config, "--zeta", "0.05"))
    ours = read_label_file(out)

    bundle = load_clip(resolve_model(str(tiny_config), "none"))
    cfg = bundle.preprocess
    tf = open_clip.image_transform(cfg.size, is_train=False, mean=cfg.mean, std=cfg.std)
    vocab = load_vocabulary("voc")
    with torch.no_grad():
        text = bundle.model.encode_text(bundle.tokenizer(vocab.prompts())).numpy()
        for p in paths:
            from PIL import Image

            img = Image.open(p).convert("RGB")
            views = [img] + [img.crop(b) for b in grid_boxes(img.width, img.height, 3)]
            emb = np.concatenate([bundle.model.encode_image(tf(v)[None]).numpy() for v in views])
            s = class_scores_np(emb, text, bundle.logit_scale)[None]
            final = aggregate_np(s, "cdul", 0.05, 1.0)[0][0]
            rel = p.relative_to(folder).as_posix()
            np.testing.assert_allclose(ours.scores[ours.paths.index(rel)], final, atol=1e-5)


@pytest.mark.slow
def test_resume_skips_done_and_repairs_a_torn_line(tmp_path, image_folder, tiny_config):
    out = tmp_path / "r.jsonl"
    run_cli(*label_args(image_folder, out, tiny_config))
    lines = out.read_text().splitlines(keepends=True)
    # simulate a crash: 7 complete rows plus half of the 8th
    out.write_text("".join(lines[:7]) + lines[7][: len(lines[7]) // 2])
    r = run_cli(*label_args(image_folder, out, tiny_config))
    assert "7 already done" in r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and len({r["path"] for r in rows}) == 12


@pytest.mark.slow
def test_different_config_is_refused_and_overwrite_starts_fresh(tmp_path, image_folder, tiny_config):
    out = tmp_path / "c.jsonl"
    run_cli(*label_args(image_folder, out, tiny_config))
    r = CliRunner().invoke(main, label_args(image_folder, out, tiny_config, "--zeta", "0.1"))
    assert r.exit_code == 2 and "different configuration" in r.output and "zeta" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)  # a message, not a traceback
    r = run_cli(*label_args(image_folder, out, tiny_config, "--zeta", "0.1", "--overwrite"))
    assert r.exit_code == 0 and len(out.read_text().splitlines()) == 12


@pytest.mark.parametrize("args,message", [
    (["--model", "ViT-B32"], "did you mean 'ViT-B-32'"),
    (["--classes", "cocoo"], "did you mean 'coco'"),
    (["--out", "x.xlsx"], "unknown output format"),
    (["--template", "a photo"], "exactly one '{}'"),
    (["--runtime", "tensorrtt"], "did you mean 'tensorrt'"),
])
def test_bad_arguments_give_clear_errors(tmp_path, image_folder, args, message):
    base = ["label", str(image_folder), "--pretrained", "none", "-q", "--out", str(tmp_path / "o.jsonl")]
    r = CliRunner().invoke(main, base + args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output


def test_offline_pretrained_weights_fail_with_advice(tmp_path, image_folder, monkeypatch):
    import cdul_rt.models as models

    monkeypatch.setattr(models, "_cached_hf_file", lambda repo: None)
    monkeypatch.setattr(models, "_reachable", lambda url, timeout=3.0: False)
    r = CliRunner().invoke(main, ["label", str(image_folder), "-q", "--out", str(tmp_path / "o.jsonl")])
    assert r.exit_code == 2
    assert "--weights FILE" in r.output and "offline" in r.output


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_gives_each_image_once(tmp_path, tiny_config):
    folder = tmp_path / "many"
    make_images(folder, 120, sizes=((40, 40),))
    make_broken(folder)
    out = tmp_path / "k.jsonl"
    cmd = [sys.executable, "-m", "cdul_rt", *label_args(folder, out, tiny_config, "--batch-size", "2")]
    cmd.remove("--workers"), cmd.remove("0")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.stat().st_size > 0 and len(out.read_bytes().splitlines()) >= 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(out.read_bytes().splitlines())
    assert 0 < before < 120, "the run should have been killed mid-way"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    paths = [json.loads(line)["path"] for line in out.read_text().splitlines()]
    assert len(paths) == 120 and len(set(paths)) == 120
    failures = {json.loads(line)["path"] for line in (tmp_path / "k.jsonl.failures.jsonl").read_text().splitlines()}
    assert failures == {"broken_text.jpg", "broken_empty.png", "broken_truncated.jpg"}


@pytest.mark.slow
def test_npz_output_resumes_when_new_images_arrive(tmp_path, image_folder, tiny_config):
    out = tmp_path / "d.npz"
    run_cli(*label_args(image_folder, out, tiny_config))
    first = read_label_file(out)
    stamp = out.stat().st_mtime_ns
    assert "12 already done" in run_cli(*label_args(image_folder, out, tiny_config)).output
    assert out.stat().st_mtime_ns == stamp  # nothing new: the finished file is not rewritten
    make_images(image_folder / "new", 3, seed=9)
    r = run_cli(*label_args(image_folder, out, tiny_config))
    assert "12 already done" in r.output
    second = read_label_file(out)
    assert len(second.paths) == 15 and len(set(second.paths)) == 15
    np.testing.assert_allclose(second.scores[: len(first.paths)], first.scores)


@pytest.mark.slow
def test_text_embeddings_are_computed_once_and_keyed(tmp_path, image_folder, tiny_config, monkeypatch):
    import cdul_rt.textcache as textcache

    calls = []
    real = textcache.encode_text_torch
    monkeypatch.setattr(textcache, "encode_text_torch", lambda b, p, **k: calls.append(len(p)) or real(b, p, **k))
    torch = ("--runtime", "torch")  # the torch runtime's text cache (onnxruntime reads its export folder's)
    run_cli(*label_args(image_folder, tmp_path / "1.jsonl", tiny_config, "--classes", "a,b,c", *torch))
    run_cli(*label_args(image_folder, tmp_path / "2.jsonl", tiny_config, "--classes", "a,b,c", *torch))
    assert calls == [3]  # the second run read the cache
    run_cli(*label_args(image_folder, tmp_path / "3.jsonl", tiny_config, "--classes", "a,b,c",
                        "--template", "a picture of a {}", *torch))
    assert calls == [3, 3]  # another template is another key
