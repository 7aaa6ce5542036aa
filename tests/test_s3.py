"""s3:// inputs and outputs against a real S3 API on loopback (moto_server started on a free port, reached through
s3fs as any S3 endpoint would be): listing, reading objects and tar shards, writing label files and Ray shards,
resume after a kill, and credentials that never reach a meta file, a label file or the output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

s3fs = pytest.importorskip("s3fs", reason="needs the s3 extra: pip install 'cdul-rt[s3]'")
pytest.importorskip("moto", reason="needs moto[server] (dev extra)")

from click.testing import CliRunner  # noqa: E402

from cdul_rt.cli import main  # noqa: E402
from cdul_rt.distributed.remote_out import redact  # noqa: E402
from cdul_rt.labelfile import read_label_file  # noqa: E402
from cdul_rt.pipeline import LabelConfig, label_folder  # noqa: E402

from conftest import make_broken, make_images  # noqa: E402

pytestmark = [pytest.mark.slow]

KEY_ID, SECRET = "AKIACDULTESTKEY00001", "cdul-test-secret-Zq8r7LkP0aWmN3x"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto_server process on 127.0.0.1:<free port>, the AWS_* environment pointing at it, bucket `cdul`."""
    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"moto_server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    env = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fs = s3fs.S3FileSystem()
    fs.mkdir("cdul")
    yield fs
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=30)


def tiny_cfg(src, out: Path, tiny_config: Path, **kw) -> LabelConfig:
    return LabelConfig(input=Path(src), out=out, model=str(tiny_config), pretrained="none", classes="voc",
                       progress=False, workers=0, **kw)


def _upload(fs, local: Path, prefix: str) -> None:
    for p in sorted(local.rglob("*")):
        if p.is_file():
            fs.put_file(str(p), f"{prefix}/{p.relative_to(local).as_posix()}")


def _no_secret_in(*texts: str) -> None:
    for t in texts:
        assert SECRET not in t and KEY_ID not in t


def _cli(*args: str):
    return CliRunner().invoke(main, ["label", *args], catch_exceptions=False)


def test_plain_label_reads_and_writes_s3_and_resumes(tmp_path, tiny_config, s3, monkeypatch):
    monkeypatch.chdir(Path.cwd())  # restored after the test's chdir
    folder = tmp_path / "images"
    make_images(folder, 10)
    make_broken(folder)
    _upload(s3, folder, "cdul/plain/images")
    model = ["--model", str(tiny_config), "--pretrained", "none", "--classes", "voc", "-q", "--batch-size", "4"]
    r = _cli("s3://cdul/plain/images", "--out", "s3://cdul/plain/out/labels.jsonl", *model)
    assert r.exit_code == 0 and "labeled 10 images" in r.output and "3 images could not be read" in r.output, \
        r.output
    assert "s3://cdul/plain/out/labels.jsonl" in r.output
    s3.invalidate_cache()
    got = tmp_path / "got"
    s3.get("cdul/plain/out/", str(got), recursive=True)
    local_out = tmp_path / "local.jsonl"
    label_folder(tiny_cfg(folder, local_out, tiny_config))
    remote, local = read_label_file(got / "labels.jsonl"), read_label_file(local_out)
    assert sorted(remote.paths) == sorted(local.paths) and len(remote.paths) == 10
    order = [local.paths.index(p) for p in remote.paths]
    np.testing.assert_allclose(remote.scores, local.scores[order], atol=1e-6)
    fails = [json.loads(x)["path"] for x in (got / "labels.jsonl.failures.jsonl").read_text().splitlines()]
    assert sorted(fails) == ["broken_empty.png", "broken_text.jpg", "broken_truncated.jpg"]
    meta = (got / "labels.jsonl.meta.json").read_text()
    _no_secret_in(meta, (got / "labels.jsonl").read_text(), r.output)
    assert json.loads(meta)["source"] == "s3://cdul/plain/images"
    # two new images in the bucket: the rerun (from another working directory) labels those only
    more = tmp_path / "more"
    make_images(more, 2, seed=5)
    _upload(s3, more, "cdul/plain/images/more")
    os.chdir(tmp_path)
    r = _cli("s3://cdul/plain/images", "--out", "s3://cdul/plain/out/labels.jsonl", *model)
    assert "labeled 2 images" in r.output and "10 already done" in r.output, r.output
    r = CliRunner().invoke(main, ["label", "s3://cdul/plain/images/more", "--out", "s3://cdul/plain/out/labels.jsonl",
                                  *model])
    assert r.exit_code != 0 and "holds labels of s3://cdul/plain/images, not s3://cdul/plain/images/more" in r.output
    s3.invalidate_cache()
    assert len(read_label_file(_fetch(s3, tmp_path)).paths) == 12


def _fetch(fs, tmp_path: Path) -> Path:
    dst = tmp_path / "again.jsonl"
    fs.get_file("cdul/plain/out/labels.jsonl", str(dst))
    (tmp_path / "again.jsonl.meta.json").write_bytes(fs.cat_file("cdul/plain/out/labels.jsonl.meta.json"))
    return dst


def test_webdataset_shards_on_s3_equal_local_shards(tmp_path, tiny_config, s3):
    from test_wds import make_shards

    shards, same = make_shards(tmp_path)
    _upload(s3, shards, "cdul/wds")
    model = ["--model", str(tiny_config), "--pretrained", "none", "--classes", "voc", "-q", "--batch-size", "3"]
    r = _cli("s3://cdul/wds/{00000..00002}.tar", "--out", str(tmp_path / "s3.jsonl"), *model)
    assert r.exit_code == 0 and "labeled 12 images" in r.output and "2 images could not be read" in r.output
    r = _cli(f"{shards}/{{00000..00002}}.tar", "--out", str(tmp_path / "local.jsonl"), *model)
    a, b = read_label_file(tmp_path / "s3.jsonl"), read_label_file(tmp_path / "local.jsonl")
    assert sorted(a.paths) == sorted(b.paths) == sorted(same)
    np.testing.assert_allclose(a.scores, b.scores[[b.paths.index(p) for p in a.paths]], atol=1e-6)
    _no_secret_in((tmp_path / "s3.jsonl.meta.json").read_text())


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


source, out_url, model = sys.argv[1:4]
ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2)
cfg = LabelConfig(input=Path(source), out=Path("unused"), model=model, pretrained="none", classes="voc",
                  batch_size=2, progress=False)
label_with_ray(cfg, RayOptions(shard_rows=1, out_url=out_url), source=source, actor_cls=SlowActor)
"""


@pytest.mark.ray
def test_ray_job_from_s3_to_s3_killed_and_resumed_is_exact(tmp_path, tiny_config, s3, caplog):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from cdul_rt.distributed.ray_label import RayOptions, label_with_ray
    from cdul_rt.distributed.shards import read_shards

    folder = tmp_path / "images"
    n = 24
    make_images(folder, n)
    _upload(s3, folder, "cdul/ray/images")
    source, out_url = "s3://cdul/ray/images", "s3://cdul/ray/labels.ray"
    script = tmp_path / "job.py"
    script.write_text(_JOB)
    proc = subprocess.Popen([sys.executable, str(script), source, out_url, str(tiny_config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.monotonic() + 300

    def uploaded() -> int:
        s3.invalidate_cache()
        return len(s3.glob("cdul/ray/labels.ray/part-*.parquet"))

    while uploaded() < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.kill()  # SIGKILL the driver (its local Ray instance goes with it)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    first = uploaded()
    assert 0 < first < n
    _no_secret_in(err.decode())

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2)
    try:
        s = label_with_ray(tiny_cfg(source, Path("unused"), tiny_config, batch_size=2),
                           RayOptions(out_url=out_url), source=source)
    finally:
        ray.shutdown()
    assert s.skipped >= first and s.labeled + s.skipped == n
    s3.invalidate_cache()
    got = tmp_path / "got.ray"
    s3.get("cdul/ray/labels.ray/", str(got), recursive=True)
    (tmp_path / "got.ray.meta.json").write_bytes(s3.cat_file("cdul/ray/labels.ray.meta.json"))
    dist = read_shards(got)
    assert len(dist.paths) == n == len(set(dist.paths))
    plain_out = tmp_path / "plain.jsonl"
    label_folder(tiny_cfg(folder, plain_out, tiny_config))
    plain = read_label_file(plain_out)
    np.testing.assert_allclose(dist.scores, plain.scores[[plain.paths.index(p) for p in dist.paths]], atol=1e-5)
    meta = (tmp_path / "got.ray.meta.json").read_text()
    assert json.loads(meta)["output_url"] == out_url and json.loads(meta)["input"] == source
    _no_secret_in(meta, caplog.text)


def test_a_ray_output_prefix_holding_other_objects_is_refused(s3):
    from cdul_rt.distributed.remote_out import RemoteOutput
    from cdul_rt.errors import CdulError

    s3.pipe_file("cdul/mixed/labels.ray/notes.txt", b"mine")
    with pytest.raises(CdulError, match=r"not cdul-rt shards \(notes\.txt"):
        RemoteOutput("s3://cdul/mixed/labels.ray").pull_meta(overwrite=True)
    assert s3.cat_file("cdul/mixed/labels.ray/notes.txt") == b"mine"  # nothing deleted
    s3.pipe_file("cdul/mixed/one.ray", b"x")
    with pytest.raises(CdulError, match="is an object"):
        RemoteOutput("s3://cdul/mixed/one.ray").pull_meta(overwrite=False)


def test_urls_with_credentials_are_redacted():
    assert redact("s3://AKIA:se+cr=et@bucket/x.tar") == "s3://bucket/x.tar"
    assert redact("s3://bucket/x") == "s3://bucket/x" and redact("/data/a@b.jpg") == "/data/a@b.jpg"


_SLOW_PLAIN = """
import sys, time
from cdul_rt.api.labeler import Labeler
score = Labeler.score_crops


def slow(self, crops):  # slow enough that the kill lands mid-run
    time.sleep(0.5)
    return score(self, crops)


Labeler.score_crops = slow
from cdul_rt.cli import main
sys.argv = ["cdul-rt", "label"] + sys.argv[1:]
main()
"""


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_plain_label_to_s3_killed_mid_run_resumes_from_its_last_upload(tmp_path, tiny_config, s3, suffix):
    folder = tmp_path / "images"
    n = 24
    make_images(folder, n)
    _upload(s3, folder, f"cdul/kill-{suffix}/images")
    out_url = f"s3://cdul/kill-{suffix}/labels.{suffix}"
    args = [f"s3://cdul/kill-{suffix}/images", "--out", out_url, "--model", str(tiny_config), "--pretrained",
            "none", "--classes", "voc", "-q", "--batch-size", "2"]
    script = tmp_path / "slow.py"
    script.write_text(_SLOW_PLAIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "CDUL_RT_UPLOAD_SECONDS": "0.3"}
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    journal = f"cdul/kill-{suffix}/labels.{suffix}" + (".journal.jsonl" if suffix == "parquet" else "")
    deadline = time.monotonic() + 240

    def uploaded_rows() -> int:
        s3.invalidate_cache()
        return s3.cat_file(journal).count(b"\n") if s3.isfile(journal) else 0

    while uploaded_rows() < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.kill()
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    before = uploaded_rows()
    assert 0 < before < n
    r = _cli(*args)
    assert r.exit_code == 0 and "already done" in r.output, r.output
    s3.invalidate_cache()
    got = tmp_path / f"got.{suffix}"
    s3.get_file(out_url.removeprefix("s3://"), str(got))
    (tmp_path / f"got.{suffix}.meta.json").write_bytes(s3.cat_file(out_url.removeprefix("s3://") + ".meta.json"))
    rows = read_label_file(got)
    assert sorted(rows.paths) == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.*"))
    assert len(rows.paths) == n == len(set(rows.paths))
    if suffix == "parquet":
        assert not s3.isfile(journal)  # folded into the Parquet file, removed from the store
