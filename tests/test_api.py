"""The Python API (`cdul_rt.Labeler`, `cdul_rt.Classifier`): the label file's numbers exactly, every input kind,
errors named per image, the label command's options and checks, embeddings against the encoders, threads."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cdul_rt import Labeler
from cdul_rt.cli import main
from cdul_rt.errors import CdulError
from cdul_rt.labelfile import read_label_file

from conftest import make_broken, make_images

OPTS = {"classes": "voc", "grid": 2, "pretrained": "none", "batch_size": 3}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api") / "images"
    make_images(root, 8, seed=5)
    make_broken(root)
    return root


@pytest.fixture(scope="module")
def labeler(tiny_config):
    with Labeler.open(str(tiny_config), **OPTS) as lab:
        yield lab


def _cli_label(folder: Path, out: Path, model: str, *extra: str) -> None:
    args = ["label", str(folder), "--model", model, "--pretrained", "none", "--classes", "voc", "--grid", "2",
            "--batch-size", "3", "--out", str(out), "-q", "-j", "0", "--save-parts", *extra]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output


def _as_written(x: np.ndarray) -> np.ndarray:
    """Label files store scores rounded to 7 decimals (labelfile._fmt)."""
    return np.round(x.astype(np.float64), 7).astype(np.float32)


def test_api_scores_equal_the_label_file_exactly(tmp_path, folder, tiny_config, labeler, monkeypatch):
    """Same images in the same order (broken files among them) -> bit-identical S_final, S_global, S_ag: both in
    the arrays `label` hands its writer and in the file it writes."""
    from cdul_rt.imageio import iter_images, relative_name
    from cdul_rt.labelfile import LabelWriter

    handed: list[tuple[np.ndarray, ...]] = []
    write_batch = LabelWriter.write_batch
    monkeypatch.setattr(LabelWriter, "write_batch",
                        lambda self, p, *arrays: handed.append(arrays) or write_batch(self, p, *arrays))
    _cli_label(folder, tmp_path / "cli.npz", str(tiny_config))
    table = read_label_file(tmp_path / "cli.npz")
    paths = list(iter_images(folder))
    res = labeler.label(paths, errors="collect")
    ok = [relative_name(p, folder) for p, e in zip(paths, res.errors) if e is None]
    assert ok == table.paths and len(ok) == 8 and sum(e is not None for e in res.errors) == 3
    raw = [np.concatenate(a) for a in zip(*handed)]
    ours = (res.scores[res.ok], res.global_scores[res.ok], res.aggregate_scores[res.ok])
    in_memory = max(float(np.abs(a - b).max()) for a, b in zip(ours, raw))
    in_file = max(float(np.abs(_as_written(a) - b).max())
                  for a, b in zip(ours, (table.scores, table.parts["global"], table.parts["aggregate"])))
    print(f"API vs CLI max abs difference: {in_memory} (arrays), {in_file} (label file, 7 decimals)")
    assert in_memory == 0.0 and in_file == 0.0
    meta = json.loads((tmp_path / "cli.npz.meta.json").read_text())
    assert labeler.config == {**meta["config"], "save_parts": False}  # the CLI ran with --save-parts
    assert labeler.classes == meta["classes"]
    assert res.labels[int(np.flatnonzero(res.ok)[0])] == [c for c, s in sorted(
        zip(labeler.classes, res.scores[res.ok][0]), key=lambda t: -t[1]) if s >= 0.5]


def test_every_input_kind_gives_the_same_scores(folder, labeler):
    path = sorted(folder.glob("img_*.png"))[0]
    data = path.read_bytes()
    pil = Image.open(io.BytesIO(data))
    arr = np.asarray(Image.open(path).convert("RGB"))
    res = labeler.label([path, str(path), data, pil, arr, bytearray(data)])
    for row in range(1, 6):
        np.testing.assert_array_equal(res.scores[row], res.scores[0])
    assert res.scores.dtype == np.float32 and res.scores.shape == (6, 20) and all(e is None for e in res.errors)
    grey = labeler.label([arr[..., 0]]).scores  # HxW grey array = the same picture as L -> RGB
    np.testing.assert_array_equal(grey, labeler.label([Image.fromarray(arr[..., 0]).convert("RGB")]).scores)


def test_bad_inputs_are_named_or_collected(folder, labeler):
    good = sorted(folder.glob("img_*"))[:2]
    items = [good[0], b"not an image", np.zeros((4, 4, 3), np.float32), folder / "missing.jpg", good[1], 42]
    with pytest.raises(CdulError, match=r"image 1 \(12 bytes\): not an image"):
        labeler.label(items)
    res = labeler.label(items, errors="collect")
    assert [e is None for e in res.errors] == [True, False, False, False, True, False]
    assert "uint8" in res.errors[2] and "FileNotFoundError" in res.errors[3] and "unsupported input" in res.errors[5]
    assert np.isnan(res.scores[1]).all() and res.labels[1] == []
    thin = labeler.label([np.zeros((2, 300, 3), np.uint8), Image.new("RGB", (300, 2))], errors="collect")
    assert all("aspect ratio" in e for e in thin.errors)  # in-memory images get the files' bounds too
    alone = labeler.label(good)
    np.testing.assert_array_equal(res.scores[[0, 4]], alone.scores)
    with pytest.raises(CdulError, match="errors must be 'raise' or 'collect'"):
        labeler.label(good, errors="ignore")


@pytest.mark.parametrize("kwargs,message", [
    ({"grid": 0}, "--grid must be >= 1"), ({"zeta": 1.5}, "--zeta must be in"), ({"mode": "cdl"}, "did you mean"),
    ({"top_k": 0}, "--top-k must be >= 1"), ({"batch_size": 0}, "--batch-size must be >= 1"),
    ({"template": "no slot"}, "exactly one"), ({"runtime": "onnx"}, "unknown runtime"),
])
def test_open_refuses_what_label_refuses(tiny_config, tmp_path, folder, kwargs, message):
    with pytest.raises(CdulError, match=message):
        Labeler.open(str(tiny_config), **{**OPTS, **kwargs})
    flag = {"batch_size": "--batch-size", "top_k": "--top-k"}.get(next(iter(kwargs)), f"--{next(iter(kwargs))}")
    r = CliRunner().invoke(main, ["label", str(folder), "--model", str(tiny_config), "--pretrained", "none",
                                  "--out", str(tmp_path / "x.jsonl"), "-q", flag, str(next(iter(kwargs.values())))])
    assert r.exit_code != 0 and (message in r.output or "Invalid value" in r.output), r.output


def test_open_defaults_are_the_label_commands():
    from cdul_rt.api.labeler import label_defaults
    from cdul_rt.cli.label import command

    import click

    ctx = click.Context(command)
    cli = {p.name: p.get_default(ctx) for p in command.params}
    checked = [n for n in label_defaults() if n in cli and n not in ("workers", "precision")]
    assert {"model", "grid", "mode", "zeta", "lam", "threshold", "batch_size", "runtime", "device"} <= set(checked)
    for name in checked:
        assert (cli[name] or None) == (label_defaults()[name] or None), name


@pytest.fixture(scope="module")
def torch_labeler(tiny_config):
    with Labeler.open(str(tiny_config), runtime="torch", **OPTS) as lab:
        yield lab


def test_embeddings_match_the_encoders(torch_labeler):
    import torch

    from cdul_rt.textcache import encode_text_torch

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8) for i in range(5)]
    emb = torch_labeler.embed_images(images)
    assert emb.shape == (5, torch_labeler.embed_dim) and emb.dtype == np.float32
    x = np.stack([torch_labeler.crops(im)[0] for im in images])  # the global views
    from cdul_rt.preprocess import normalize_batch

    bundle = torch_labeler._session.runner.bundle
    with torch.no_grad():
        want = bundle.model.encode_image(torch.from_numpy(normalize_batch(x, torch_labeler._session.preprocess)),
                                         normalize=True).numpy()
    assert (emb * want).sum(1).min() >= 0.9999
    assert (torch_labeler.label(images).embeddings * emb).sum(1).min() >= 0.9999  # what label returns
    texts = torch_labeler.embed_texts(["a dog", "a photo of the cat"])
    np.testing.assert_allclose(texts, encode_text_torch(bundle, ["a dog", "a photo of the cat"]), atol=1e-6)
    assert torch_labeler.embed_texts("a dog").shape == (1, torch_labeler.embed_dim)


def test_one_labeler_shared_by_four_threads_equals_serial(folder, labeler):
    paths = sorted(folder.glob("img_*"))
    jobs = [paths[i:i + 4] for i in range(0, 8, 2)]  # overlapping lists of different images
    serial = [labeler.label(job).scores for job in jobs]
    got: dict[int, list[np.ndarray]] = {i: [] for i in range(4)}

    def work(i: int) -> None:
        for _ in range(3):
            got[i].append(labeler.label(jobs[i]).scores)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert len(got[i]) == 3
        for scores in got[i]:
            np.testing.assert_array_equal(scores, serial[i])


def test_close_frees_the_model(tiny_config, folder):
    import gc
    import weakref

    lab = Labeler.open(str(tiny_config), runtime="torch", **OPTS)  # the torch runtime holds a CLIP model
    path = sorted(folder.glob("img_*"))[0]
    assert lab.label([path]).scores.shape == (1, 20)
    model = weakref.ref(lab._session.runner.bundle.model)
    lab.close()
    gc.collect()
    assert lab._session.runner.is_active is False and model() is None  # nothing holds the CLIP model any more
    for use in (lambda: lab.label([path]), lambda: lab.embed_images([path]), lambda: lab.embed_texts(["a"])):
        with pytest.raises(CdulError, match="this Labeler is closed"):
            use()


def test_label_keeps_a_callers_session_reusable(tiny_config, folder, tmp_path):
    """`label_folder(cfg, session)` (bench reuses sessions) wraps it in a Labeler that only deactivates it."""
    from cdul_rt.pipeline import LabelConfig, label_folder, open_session
    from cdul_rt.vocab import load_vocabulary

    cfg = LabelConfig(input=folder, out=tmp_path / "a.jsonl", model=str(tiny_config), pretrained="none",
                      classes="voc", grid=2, workers=0, progress=False)
    session = open_session(cfg, load_vocabulary("voc"))
    a = label_folder(cfg, session)
    b = label_folder(LabelConfig(**{**cfg.__dict__, "out": tmp_path / "b.jsonl"}), session)
    assert a.labeled == b.labeled == 8
    assert read_label_file(tmp_path / "a.jsonl").scores.tolist() == read_label_file(tmp_path / "b.jsonl").scores.tolist()


def test_prepare_crops_is_what_the_labeler_feeds(folder, labeler):
    from cdul_rt import prepare_crops
    from cdul_rt.preprocess import normalize_batch

    path = sorted(folder.glob("img_*"))[1]
    x = prepare_crops([path, path.read_bytes()], grid=2, preprocess=labeler._session.preprocess.to_dict())
    assert x.shape == (2, 5, 3, 32, 32)
    np.testing.assert_array_equal(x[0], normalize_batch(labeler.crops(path), labeler._session.preprocess))
    np.testing.assert_array_equal(x[0], x[1])
    with pytest.raises(CdulError, match=r"image 0 \(0 bytes\): empty"):
        prepare_crops([b""], grid=2, preprocess={"size": 32})


class _SharedBufferRunner:
    """A labeler runner that, like TensorRT's, reuses one output buffer per call: correct only one call at a time."""

    def __new__(cls, crops_per_image: int, size: int, dim: int):
        import time

        from cdul_rt.engines.base import BaseRunner, LabelerRunnerMixin

        class Runner(LabelerRunnerMixin, BaseRunner):
            name = "shared-buffer"

            def _infer(self, feed):
                k = feed["crops"].shape[0] // self.crops_per_image
                self.buf = feed["crops"].reshape(k, -1).mean(1)  # written ...
                time.sleep(0.002)  # ... another call may run here
                s = np.repeat(self.buf[:, None], feed["text_embeddings"].shape[0], 1).astype(np.float32)
                return {"S_final": s, "S_global": s, "S_ag": s}  # ... and read back

        runner = Runner()
        runner.crops_per_image, runner.image_size, runner.embed_dim = crops_per_image, size, dim
        return runner


def test_the_labeler_runs_one_batch_at_a_time(folder, labeler):
    """The thread-safety promise holds for runtimes whose runner is not thread-safe: calls are serialised."""
    import dataclasses

    s = labeler._session
    racy = dataclasses.replace(s, runner=_SharedBufferRunner(labeler.crops_per_image, s.preprocess.size,
                                                             labeler.embed_dim))
    shared = Labeler(racy, labeler.options, labeler._vocab)
    images = [np.full((20, 30, 3), v, np.uint8) for v in range(0, 250, 10)]
    serial = [shared.label(images[i::4]).scores for i in range(4)]
    got: dict[int, list[np.ndarray]] = {i: [] for i in range(4)}

    def work(i: int) -> None:
        for _ in range(5):
            got[i].append(shared.label(images[i::4]).scores)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(x, serial[i]) for i in range(4) for x in got[i])


@pytest.mark.parametrize("module", ["cdul_rt.api.labeler", "cdul_rt.api.inputs"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 2 and result.failed == 0


def test_resolved_options_without_a_folder():
    from cdul_rt.api.labeler import label_config
    from cdul_rt.engines.auto import choose

    cfg = label_config({"runtime": "auto"})
    rule = choose()  # `label`'s default rule: runtime auto = no runtime given
    assert (cfg.runtime, cfg.precision) == (rule.runtime, rule.precision) and cfg.model == "ViT-B-32" and cfg.grid == 3
    assert not cfg.input.exists()  # nothing walks the caller's working directory
    assert (label_config({}).runtime, label_config({}).precision) == (rule.runtime, rule.precision)
    assert (label_config({"runtime": "torch"}).runtime, label_config({"runtime": "torch"}).precision) == ("torch",
                                                                                                       "fp32")


def test_one_image_where_a_list_is_expected_is_refused(folder, labeler):
    """A path iterates into characters and an HxWx3 array into rows (each labeled as a grey image): refused with
    what to do; an NxHxWx3 array is N images."""
    from cdul_rt import prepare_crops

    path = sorted(folder.glob("img_*"))[0]
    arr = np.asarray(Image.open(path).convert("RGB"))
    for one in (str(path), path, path.read_bytes(), Image.open(path), arr):
        for call in (labeler.label, labeler.embed_images,
                     lambda x: prepare_crops(x, 2, {"size": 32})):
            with pytest.raises(CdulError, match=r"must be a list of images, got one .*wrap it in a list"):
                call(one)
    batch = labeler.label(np.stack([arr, arr]))
    np.testing.assert_array_equal(batch.scores, labeler.label([arr, arr]).scores)


def test_single_image_helpers_and_texts_raise_cdul_errors(folder, labeler):
    """crops / global_view of a bad image: a CdulError with the failures file's reason (not PIL's exception);
    embed_texts of nothing is an empty [0, D] array, of a non-string a CdulError naming it."""
    for helper in (labeler.crops, labeler.global_view):
        with pytest.raises(CdulError, match=r"^not an image \(or an unsupported format\)$"):
            helper(b"not an image")
        with pytest.raises(CdulError, match="aspect ratio"):
            helper(np.zeros((2, 300, 3), np.uint8))
    empty = labeler.embed_texts([])
    assert empty.shape == (0, labeler.embed_dim) and empty.dtype == np.float32
    with pytest.raises(CdulError, match=r"text 1 is int 7"):
        labeler.embed_texts(["a dog", 7])
    res = labeler.label([b"not an image"], errors="collect")  # the per-item reason is unchanged by the wrapping
    assert res.errors == ["not an image (or an unsupported format)"]


def test_embed_views_after_close_says_closed(tiny_config):
    lab = Labeler.open(str(tiny_config), **OPTS)
    lab.close()
    lab.close()  # twice is harmless
    with pytest.raises(CdulError, match="this Labeler is closed"):
        lab.embed_views(np.zeros((1, 32, 32, 3), np.uint8))


def test_classes_may_be_a_list_of_names(tiny_config, folder):
    """A Python list of class names is the comma list (it was an AttributeError from `.strip()`)."""
    img = [sorted(folder.glob("img_*"))[0]]
    kw = {k: v for k, v in OPTS.items() if k != "classes"}
    with Labeler.open(str(tiny_config), classes=["cat", "hot dog"], **kw) as lab:
        assert lab.classes == ["cat", "hot dog"]
        as_list = lab.label(img).scores
    with Labeler.open(str(tiny_config), classes="cat,hot dog", **kw) as lab:
        np.testing.assert_array_equal(lab.label(img).scores, as_list)
    for bad in ([], ["a,b", "c"], ["ok", 3], {"cat"}):
        with pytest.raises(CdulError, match="classes must be"):
            Labeler.open(str(tiny_config), classes=bad, **kw)


def test_results_print_as_one_line(labeler):
    """A notebook shows a result by its repr: one line, not every label list and score row."""
    res = labeler.label([np.zeros((40, 40, 3), np.uint8)] * 30 + [b"junk"], errors="collect")
    text = repr(res)
    assert text.startswith("LabelResult(31 images, 20 classes, 1 unreadable, labels[0]=")
    assert "\n" not in text and len(text) < 300
