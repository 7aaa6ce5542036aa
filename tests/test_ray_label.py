"""`label --cluster ray` on a local 2-CPU Ray instance: same scores as plain `label`, failures table, resume after a
kill -9 of the whole job and through an actor crash, URL inputs. A tiny random CLIP keeps it to seconds of compute;
most of the time is Ray and torch starting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'cdul-rt[ray]'")
pytest.importorskip("ray.data")

from click.testing import CliRunner  # noqa: E402

from cdul_rt.cli import main  # noqa: E402
from cdul_rt.distributed.ray_label import LabelActor, RayOptions, label_with_ray  # noqa: E402
from cdul_rt.distributed.shards import label_shards, merged_shards, read_failures, read_shards  # noqa: E402
from cdul_rt.errors import CdulError  # noqa: E402
from cdul_rt.labelfile import read_label_file, read_meta  # noqa: E402
from cdul_rt.pipeline import LabelConfig, label_folder  # noqa: E402

from conftest import make_broken, make_images  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAY_LOCAL = {"num_cpus": 2, "include_dashboard": False, "object_store_memory": 200 * 1024**2}


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", **RAY_LOCAL)  # never the latest cluster on this shared machine
    yield ray
    if started:
        ray.shutdown()


def tiny_cfg(folder: Path, out: Path, tiny_config: Path, **kw) -> LabelConfig:
    return LabelConfig(input=folder, out=out, model=str(tiny_config), pretrained="none", classes="voc",
                       progress=False, workers=0, **kw)


def test_ray_job_equals_plain_label_and_resumes_from_urls(tmp_path, tiny_config, local_ray):
    folder = tmp_path / "images"
    make_images(folder, 12)
    broken = make_broken(folder)
    out = tmp_path / "labels.ray"
    r = CliRunner().invoke(main, ["label", str(folder), "--model", str(tiny_config), "--pretrained", "none",
                                  "--classes", "voc", "--out", str(out), "-q", "--save-parts", "--batch-size", "4",
                                  "--cluster", "ray"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "labeled 12 images" in r.output and "3 images could not be read" in r.output
    plain_out = tmp_path / "plain.jsonl"
    label_folder(tiny_cfg(folder, plain_out, tiny_config, save_parts=True, batch_size=3))

    plain, dist = read_label_file(plain_out), read_shards(out)
    assert dist.paths == sorted(plain.paths) and len(set(dist.paths)) == 12 and dist.classes == plain.classes
    order = [plain.paths.index(p) for p in dist.paths]
    np.testing.assert_allclose(dist.scores, plain.scores[order], atol=1e-5)
    for part in ("global", "aggregate"):
        np.testing.assert_allclose(dist.parts[part], plain.parts[part][order], atol=1e-5)
    assert read_label_file(label_shards(out)[0]).classes == plain.classes  # a shard is a plain-label Parquet file
    assert [p for p, _ in read_failures(out)] == sorted(broken)
    assert all(reason for _, reason in read_failures(out))
    meta, plain_meta = read_meta(out), read_meta(plain_out)
    assert meta["config"] == plain_meta["config"] and meta["status"] == "complete"
    assert meta["cluster"]["actors"] == 1 and meta["last_run"]["labeled"] == 12

    # new images arrive; the job reruns over a file:// URL (the fsspec path every remote store takes)
    make_images(folder / "more", 3, seed=7)
    s = label_with_ray(tiny_cfg(folder, out, tiny_config, save_parts=True, batch_size=4), RayOptions(),
                       source=f"file://{folder}")
    assert (s.labeled, s.skipped, s.failed) == (3, 15, 0)
    label_folder(tiny_cfg(folder, plain_out, tiny_config, save_parts=True))
    plain, dist = read_label_file(plain_out), read_shards(out)
    assert dist.paths == sorted(plain.paths) and len(dist.paths) == 15
    np.testing.assert_allclose(dist.scores, plain.scores[[plain.paths.index(p) for p in dist.paths]], atol=1e-5)

    # a different configuration is refused, not mixed into the shards
    with pytest.raises(CdulError, match="different configuration"):
        label_with_ray(tiny_cfg(folder, out, tiny_config, save_parts=True, grid=2))


def _bytes_copy(src: Path, folder: Path, raw: bytes) -> str:
    """Copy ``src`` to ``folder/<raw>`` (a name that need not be UTF-8); returns the name as Python sees it."""
    with open(os.fsencode(folder) + b"/" + raw, "wb") as f:
        f.write(src.read_bytes())
    return os.fsdecode(raw)


def test_non_utf8_names_label_through_ray_as_plain_label_does_then_resume(tmp_path, tiny_config, local_ray):
    """A file whose name is not valid UTF-8 crashed the whole job (Arrow string columns refuse lone surrogates):
    now its row and a broken one's failure keep the exact bytes, the merged shards are plain label's Parquet file,
    and a rerun skips them (the resume set reads path_bytes)."""
    import pyarrow.parquet as pq

    from cdul_rt.embeddings import read_embeddings
    from cdul_rt.formats.parquet import exact_paths

    folder = tmp_path / "images"
    images = make_images(folder, 5)
    bad = _bytes_copy(images[1], folder, b"caf\xe9.png")
    (tmp_path / "no-image").write_bytes(b"not an image")
    broken = "sub/" + _bytes_copy(tmp_path / "no-image", folder / "sub", b"bro\xffken.jpg")
    out, plain_out = tmp_path / "labels.ray", tmp_path / "plain.parquet"
    kw = {"batch_size": 2, "save_parts": True, "save_embeddings": True}
    s = label_with_ray(tiny_cfg(folder, out, tiny_config, **kw), RayOptions(shard_rows=1))
    assert (s.labeled, s.failed) == (6, 1)
    label_folder(tiny_cfg(folder, plain_out, tiny_config, **kw))

    dist = read_shards(out)
    assert bad in dist.paths and os.fsencode(bad) == b"caf\xe9.png"  # the original bytes, not a lookalike
    assert dist.paths == sorted(read_label_file(plain_out).paths)
    merged, plain = merged_shards(out), pq.read_table(plain_out)
    plain = plain.take(np.argsort(np.asarray(exact_paths(plain), dtype=object), kind="stable"))
    assert merged.schema.equals(plain.schema, check_metadata=True)  # path_bytes, embedding, classes included
    for col in ("path", "path_bytes", "labels"):
        assert merged.column(col).to_pylist() == plain.column(col).to_pylist(), col
    for col, atol in (("scores", 1e-5), ("global", 1e-5), ("aggregate", 1e-5), ("embedding", 2e-3)):  # f16
        np.testing.assert_allclose(np.asarray(merged.column(col).to_pylist(), np.float32),
                                   np.asarray(plain.column(col).to_pylist(), np.float32), rtol=0, atol=atol)
    assert sorted(read_embeddings(out)[0]) == dist.paths
    assert [p for p, _ in read_failures(out)] == [broken] and os.fsencode(broken) == b"sub/bro\xffken.jpg"

    more = make_images(folder / "more", 2, seed=7)
    bad2 = "more/" + _bytes_copy(more[0], folder / "more", b"\xfe\xfd.png")
    s = label_with_ray(tiny_cfg(folder, out, tiny_config, **kw), RayOptions(shard_rows=1))
    assert (s.labeled, s.skipped, s.failed) == (3, 7, 0)  # the non-UTF-8 row and failure are not redone
    label_folder(tiny_cfg(folder, plain_out, tiny_config, **kw))
    final = read_shards(out)
    assert final.paths == sorted(read_label_file(plain_out).paths) and len(set(final.paths)) == 9
    assert bad2 in final.paths and [p for p, _ in read_failures(out)] == [broken]


def test_webdataset_keys_that_are_not_utf8_label_through_ray_and_resume(tmp_path, tiny_config, local_ray):
    """A tar member name that is not valid UTF-8 (webdataset keys it with lone surrogates) crashed the job where
    the decode stage handed its rows to Ray; a resume sends the written keys back to the decode tasks."""
    pytest.importorskip("webdataset", reason="needs the webdataset extra: pip install 'cdul-rt[webdataset]'")
    from cdul_rt.distributed.stream_label import label_source
    from cdul_rt.distributed.wds import write_shard

    images = make_images(tmp_path / "src", 2)
    key, broken = os.fsdecode(b"caf\xe9"), os.fsdecode(b"bro\xffken")
    shard = str(tmp_path / "00000.tar")
    write_shard(shard, [(key, {"png": images[1].read_bytes()}), ("ok", {"jpg": images[0].read_bytes()}),
                        (broken, {"jpg": b"not a jpeg"})])
    out, plain_out = tmp_path / "wds.ray", tmp_path / "plain.parquet"
    s = label_with_ray(tiny_cfg(shard, out, tiny_config, batch_size=2), RayOptions(), shard)
    assert (s.labeled, s.failed) == (2, 1)
    label_source(tiny_cfg(shard, plain_out, tiny_config), shard)
    plain, dist = read_label_file(plain_out), read_shards(out)
    assert dist.paths == sorted(plain.paths) == [f"00000.tar/{key}", "00000.tar/ok"]
    np.testing.assert_allclose(dist.scores, plain.scores[[plain.paths.index(p) for p in dist.paths]], atol=1e-5)
    assert [p for p, _ in read_failures(out)] == [f"00000.tar/{broken}"]
    s = label_with_ray(tiny_cfg(shard, out, tiny_config, batch_size=2), RayOptions(), shard)
    assert (s.labeled, s.skipped, s.failed) == (0, 3, 0)


_JOB = """
import sys, time
from pathlib import Path
import ray
from cdul_rt.distributed.ray_label import LabelActor, RayOptions, label_with_ray
from cdul_rt.pipeline import LabelConfig


class SlowActor(LabelActor):  # slow enough that the kill lands mid-job
    def __call__(self, batch):
        time.sleep(0.4)
        return super().__call__(batch)


folder, out, model, address = sys.argv[1:5]
ray.init(address=address)  # the test's 2-CPU instance
cfg = LabelConfig(input=Path(folder), out=Path(out), model=model, pretrained="none", classes="voc", batch_size=2,
                  progress=False)
label_with_ray(cfg, RayOptions(shard_rows=1), actor_cls=SlowActor)
"""


def crash_once_actor(marker: Path) -> type:
    """An actor whose process dies on its first batch (once per job); defined in a function so Ray ships it by
    value to the workers."""

    class CrashOnceActor(LabelActor):
        def __call__(self, batch):
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().__call__(batch)

    return CrashOnceActor


def test_killed_job_resumes_to_exactly_one_row_per_image_through_an_actor_crash(tmp_path, tiny_config, local_ray):
    folder, out = tmp_path / "images", tmp_path / "labels.ray"
    n = 30
    make_images(folder, n)
    script = tmp_path / "job.py"
    script.write_text(_JOB)
    address = local_ray.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, str(script), str(folder), str(out), str(tiny_config), address],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(label_shards(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL the job's driver mid-way: Ray then ends the job's actors and tasks
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    first = read_shards(out)
    assert 0 < len(first.paths) < n and len(set(first.paths)) == len(first.paths)

    marker = tmp_path / "crashed"
    s = label_with_ray(tiny_cfg(folder, out, tiny_config, batch_size=4), actor_cls=crash_once_actor(marker))
    assert marker.exists()  # an actor died mid-task; Ray restarted it and retried the task
    final = read_shards(out)
    assert sorted(final.paths) == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.*"))
    assert len(final.paths) == n == len(set(final.paths))
    assert s.skipped == len(first.paths) and s.labeled == n - len(first.paths)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("kw, message", [
    ({"device": "cuda:1"}, "use --device cuda"),
    ({"grid": 0}, "--grid must be >= 1"),
    ({"out_name": "labels.jsonl"}, "directory of Parquet shards"),
])
def test_options_a_ray_job_cannot_honour_are_refused_before_ray_starts(tmp_path, tiny_config, kw, message):
    out = tmp_path / kw.pop("out_name", "labels.ray")
    with pytest.raises(CdulError, match=message):
        label_with_ray(tiny_cfg(tmp_path, out, tiny_config, **kw), RayOptions(address="unused:1"))


def test_an_actor_with_another_labeler_is_refused_naming_its_node(tmp_path, tiny_config):
    """README: a node whose files differ (other weights behind the same path) is refused by name, not mixed in."""
    from cdul_rt.distributed.ray_label import _describe

    cfg = tiny_cfg(tmp_path, tmp_path / "out", tiny_config, runtime="torch")
    expected, _ = _describe(cfg)
    LabelActor(cfg, expected)  # the same labeler is accepted
    other = dict(expected, weights_hash="0" * 64)
    with pytest.raises(CdulError, match=rf"actor on {os.uname().nodename} .*weights_hash"):
        LabelActor(cfg, other)
