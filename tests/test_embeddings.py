"""`label --save-embeddings` and `cdul-rt similar`: the saved embeddings are the encoder's own (cosine >= 0.9999
against open_clip's encode_image called directly), in every output format and runtime, resumable, crash-safe;
`similar` finds an image from itself and single-object images from their class name."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cdul_rt.cli import main
from cdul_rt.embeddings import EmbeddingWriter, embedding_files, read_embeddings
from cdul_rt.errors import CdulError
from cdul_rt.labelfile import read_label_file, write_label_file

GRID = 2


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from cdul_rt.synth.scenes import write_scene_folder

    return write_scene_folder(tmp_path_factory.mktemp("scenes"), 6, seed=3) / "images"


def encoder_reference(bundle, folder: Path, paths: list[str]) -> np.ndarray:
    """open_clip's encode_image on each image's global view, decoded and preprocessed as `label` does."""
    import torch

    from cdul_rt.crops import image_crops
    from cdul_rt.imageio import open_rgb
    from cdul_rt.preprocess import normalize_batch

    crops = np.stack([image_crops(open_rgb(folder / p), GRID, bundle.preprocess)[0] for p in paths])
    with torch.no_grad():
        emb = bundle.model.encode_image(torch.from_numpy(normalize_batch(crops, bundle.preprocess)), normalize=True)
    return emb.numpy()


def check_parity(saved: np.ndarray, reference: np.ndarray) -> None:
    assert saved.dtype == np.float16 and saved.shape == reference.shape
    saved = saved.astype(np.float32)
    cos = (saved * reference).sum(1) / np.linalg.norm(saved, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() >= 0.9999, cos
    # distinct images give distinct rows: a writer repeating one row (or misaligning rows) fails here
    assert (reference @ reference.T)[~np.eye(len(reference), dtype=bool)].max() < 0.9999


def label(images: Path, out: Path, *extra: str) -> None:
    result = CliRunner().invoke(main, ["label", str(images), "--out", str(out), "--classes", "synth", "--model",
                                       "cdul-tiny", "--grid", str(GRID), "-j", "0", "-b", "4", "-q", *extra])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def tiny_clip():
    from cdul_rt.synth.evaluate import load_tiny_clip

    return load_tiny_clip()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "npz"])
def test_saved_embeddings_are_the_encoders_in_every_format(fmt, scenes, tiny_clip, tmp_path):
    out = tmp_path / f"labels.{fmt}"
    label(scenes, out, "--save-embeddings", "--runtime", "torch")  # onnxruntime (the CPU default): the next test
    paths, saved = read_embeddings(out)
    assert paths == read_label_file(out).paths  # row order = the label file's
    check_parity(np.asarray(saved), encoder_reference(tiny_clip, scenes, paths))
    files = embedding_files(out)
    assert files["npy"].is_file() == (fmt in ("jsonl", "csv")) and not files["journal"].exists()
    if fmt in ("parquet", "npz"):
        assert read_label_file(out).classes  # the label file itself still reads


@pytest.mark.slow
def test_onnxruntime_embeddings_match_the_encoder(scenes, tiny_config, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from cdul_rt.models import load_clip
    from cdul_rt.pipeline import LabelConfig, label_folder
    from cdul_rt.presets import resolve_model

    monkeypatch.setenv("CDUL_RT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ort.parquet"
    label_folder(LabelConfig(input=scenes, out=out, model=str(tiny_config), pretrained="none", classes="voc",
                             grid=GRID, workers=0, runtime="onnxruntime", progress=False, save_embeddings=True))
    paths, saved = read_embeddings(out)
    check_parity(saved, encoder_reference(load_clip(resolve_model(str(tiny_config), "none")), scenes, paths))


@pytest.mark.slow
def test_resume_adds_the_new_images_embeddings(scenes, tiny_clip, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    names = sorted(p.name for p in scenes.iterdir())
    for name in names[:3]:
        shutil.copy(scenes / name, images / name)
    for fmt in ("jsonl", "parquet"):
        out = tmp_path / f"labels.{fmt}"
        label(images, out, "--save-embeddings")
        assert len(read_embeddings(out)[0]) == 3
    for name in names[3:]:
        shutil.copy(scenes / name, images / name)
    for fmt in ("jsonl", "parquet"):
        out = tmp_path / f"labels.{fmt}"
        label(images, out, "--save-embeddings")  # resumes: only the 3 new images are encoded
        paths, saved = read_embeddings(out)
        assert sorted(paths) == names and paths == read_label_file(out).paths
        check_parity(saved, encoder_reference(tiny_clip, images, paths))


@pytest.mark.slow
def test_parquet_resume_keeps_the_embedding_of_a_non_utf8_name(scenes, tmp_path):
    """Parquet's embedding reader named rows by their readable ``path`` (``caf\\xe9.png``), not the name, so a
    resume with --save-embeddings was refused ("labeled images have no embedding"); Ray shards read the same way."""
    images = tmp_path / "images"
    images.mkdir()
    names = sorted(p.name for p in scenes.iterdir())
    shutil.copy(scenes / names[0], images / names[0])
    with open(os.fsencode(images) + b"/caf\xe9.png", "wb") as f:
        f.write((scenes / names[1]).read_bytes())
    out = tmp_path / "labels.parquet"
    label(images, out, "--save-embeddings")
    shutil.copy(scenes / names[2], images / names[2])
    label(images, out, "--save-embeddings")  # resumes: carries the first two rows' embeddings by name
    paths, _ = read_embeddings(out)
    assert paths == read_label_file(out).paths and len(paths) == 3 and os.fsdecode(b"caf\xe9.png") in paths


@pytest.mark.slow
def test_embeddings_are_part_of_the_recorded_configuration(scenes, tmp_path):
    out = tmp_path / "labels.jsonl"
    label(scenes, out)
    result = CliRunner().invoke(main, ["label", str(scenes), "--out", str(out), "--classes", "synth", "--model",
                                       "cdul-tiny", "--grid", str(GRID), "-j", "0", "-q", "--save-embeddings"])
    assert result.exit_code == 2 and "save_embeddings differ" in result.output
    with pytest.raises(CdulError, match="no saved embeddings"):
        read_embeddings(out)
    label(scenes, out, "--save-embeddings", "--overwrite")
    assert len(read_embeddings(out)[0]) == 6
    label(scenes, out, "--overwrite")  # --overwrite without embeddings removes the old ones
    assert not embedding_files(out)["npy"].exists()


def test_writer_survives_a_crash_mid_batch(tmp_path):
    """A journal cut inside a row (crash) loses that row only; a row written twice (re-labeled after a crash
    between the embedding and the label write) keeps its last copy; rows are re-ordered to the label file's."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((6, 8)).astype(np.float16)
    out = tmp_path / "labels.jsonl"
    writer = EmbeddingWriter(out)
    writer.write_batch(["a", "b", "c"], emb[:3])
    writer.write_batch(["d"], emb[3:4])
    writer.close()
    files = embedding_files(out)
    with open(files["journal"], "ab") as f:  # crash: a partial row after the last complete one
        f.write(emb[4].tobytes()[:5])
    writer = EmbeddingWriter(out)
    writer.write_batch(["d", "e"], emb[4:6])  # "d" again, with other numbers: the last one wins
    write_label_file(out, ["e", "a", "d", "c", "b"], ["x"], np.zeros((5, 1), np.float32))
    writer.finalize()
    paths, saved = read_embeddings(out)
    assert paths == ["e", "a", "d", "c", "b"]
    np.testing.assert_array_equal(saved, emb[[5, 0, 4, 2, 1]])
    assert not files["journal"].exists() and not files["journal_paths"].exists()


def test_finalize_refuses_labels_without_embeddings(tmp_path):
    out = tmp_path / "labels.jsonl"
    writer = EmbeddingWriter(out)
    writer.write_batch(["a"], np.ones((1, 4), np.float16))
    write_label_file(out, ["a", "b"], ["x"], np.zeros((2, 1), np.float32))
    with pytest.raises(CdulError, match="1 labeled images have no embedding"):
        writer.finalize()


@pytest.fixture(scope="module")
def singles(tmp_path_factory) -> tuple[Path, Path]:
    """Three single-object images per synthetic class, labeled with embeddings."""
    from cdul_rt.synth.classes import SYNTH_CLASSES
    from cdul_rt.synth.scenes import STREAM_SINGLE, item_rng, render_single

    root = tmp_path_factory.mktemp("singles")
    images = root / "images"
    images.mkdir()
    for c, name in enumerate(SYNTH_CLASSES):
        for i in range(3):
            render_single(c, item_rng(5, c * 1000 + i, STREAM_SINGLE)).save(images / f"{name}_{i}.png")
    out = root / "labels.jsonl"
    label(images, out, "--save-embeddings")
    return images, out


def similar(*args) -> dict:
    result = CliRunner().invoke(main, ["similar", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.slow
def test_similar_image_finds_itself_first(singles):
    images, out = singles
    query = images / "heart_1.png"
    matches = similar(out, "--image", query, "--top", "4")["matches"]
    assert matches[0]["path"] == "heart_1.png" and matches[0]["similarity"] == pytest.approx(1.0, abs=1e-3)
    sims = [m["similarity"] for m in matches]
    assert sims == sorted(sims, reverse=True) and len(matches) == 4


@pytest.mark.slow
def test_similar_text_finds_the_class(singles):
    from cdul_rt.synth.classes import SYNTH_CLASSES

    _, out = singles
    hits = 0
    for name in SYNTH_CLASSES:
        top = similar(out, "--text", f"a photo of the {name}", "--top", "3")["matches"]
        hits += sum(m["path"].rsplit("_", 1)[0] == name for m in top)
    # precision@3 over the 12 classes; chance is 3/36 = 0.08
    assert hits / (3 * len(SYNTH_CLASSES)) >= 0.6


@pytest.mark.slow
def test_similar_errors_are_clean(singles, tmp_path):
    images, out = singles
    for args in ([], ["--image", str(images / "heart_1.png"), "--text", "x"]):
        result = CliRunner().invoke(main, ["similar", str(out), *args])
        assert result.exit_code == 2 and "exactly one query" in result.output
    other = tmp_path / "other.jsonl"  # the same files, but the meta says other weights made them
    for src in out.parent.glob(out.name + "*"):
        shutil.copy(src, tmp_path / src.name.replace(out.name, other.name))
    meta_path = Path(f"{other}.meta.json")
    meta = json.loads(meta_path.read_text())
    meta["config"]["weights_hash"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    result = CliRunner().invoke(main, ["similar", str(other), "--text", "a photo of the heart"])
    assert result.exit_code == 2 and "weights differ" in result.output
    bare = write_label_file(tmp_path / "bare.jsonl", ["a.png"], ["x"], np.zeros((1, 1), np.float32))
    result = CliRunner().invoke(main, ["similar", str(bare), "--text", "x"])
    assert result.exit_code == 2 and "--save-embeddings" in result.output and "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.ray
def test_ray_shards_carry_the_same_embeddings(scenes, tiny_clip, tmp_path):
    ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'cdul-rt[ray]'")
    pytest.importorskip("ray.data")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2)
    try:
        out = tmp_path / "labels.ray"
        label(scenes, out, "--save-embeddings", "--cluster", "ray")
    finally:
        if started:
            ray.shutdown()
    from cdul_rt.distributed.shards import label_shards, read_shards

    paths, saved = read_embeddings(out)
    assert sorted(paths) == sorted(read_shards(out).paths)
    check_parity(saved, encoder_reference(tiny_clip, scenes, paths))
    assert read_label_file(label_shards(out)[0]).classes  # a shard still reads as a plain label file
    query = scenes / paths[2]
    assert similar(out, "--image", query, "--top", "1")["matches"][0]["path"] == paths[2]


@pytest.mark.slow
def test_similar_queries_embeddings_made_with_an_artifact_folder(scenes, tiny_config, tmp_path):
    """`label --engine-dir DIR --save-embeddings` then `similar`: the query is embedded through the same folder (the
    meta's model is only the folder's architecture name, which open_clip does not know)."""
    pytest.importorskip("onnxruntime")
    from cdul_rt.export.clip import ExportOptions, export_clip

    folder = tmp_path / "art"
    export_clip(ExportOptions(out=folder, model=str(tiny_config), pretrained="none", classes="voc", grid=GRID),
                log=lambda m: None)
    out = tmp_path / "labels.jsonl"
    result = CliRunner().invoke(main, ["label", str(scenes), "--runtime", "onnxruntime", "--engine-dir", str(folder),
                                       "--classes", "voc", "--out", str(out), "-j", "0", "-q", "--save-embeddings"])
    assert result.exit_code == 0, result.output
    query = sorted(scenes.iterdir())[2]
    matches = similar(out, "--image", query, "--top", "2")["matches"]
    assert matches[0]["path"] == query.name and matches[0]["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert matches[1]["similarity"] < 0.9999
    shutil.rmtree(folder)
    result = CliRunner().invoke(main, ["similar", str(out), "--text", "a dog"])
    assert result.exit_code == 2 and "not on this machine" in result.output, result.output


@pytest.mark.slow
def test_similar_lists_non_utf8_names(tmp_path):
    """A file name that is not valid UTF-8 (kept by label as lone surrogates) is listed as label lists it (\\xNN),
    not a UnicodeEncodeError on a UTF-8 stdout."""
    import os

    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30), (200, 20, 20)).save(images / os.fsdecode(b"caf\xe9.jpg"))
    Image.new("RGB", (40, 30), (20, 20, 200)).save(images / "ok.jpg")
    out = tmp_path / "labels.jsonl"
    label(images, out, "--save-embeddings")
    result = CliRunner().invoke(main, ["similar", str(out), "--text", "a red square"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "caf\\xe9.jpg" in result.output and "ok.jpg" in result.output
    assert os.fsdecode(b"caf\xe9.jpg") in {m["path"] for m in similar(out, "--text", "x")["matches"]}  # --json: exact
