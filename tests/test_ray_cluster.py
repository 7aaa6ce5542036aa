"""`label --cluster ray` on a simulated multi-node cluster (``ray.cluster_utils.Cluster``: several raylets on this
machine, each a node with its own resources): the job spreads over the nodes and equals plain `label`; a worker
node removed mid-job; the driver killed mid-job and rerun; nodes declaring GPUs (no real GPU) in the printed plan;
a node with other model files refused by name. Nodes have 1 CPU each (the machine has 2 shared cores)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'cdul-rt[ray]'")
pytest.importorskip("ray.data")

from click.testing import CliRunner  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from cdul_rt.cli import main  # noqa: E402
from cdul_rt.distributed.ray_label import LabelActor, RayOptions, label_with_ray  # noqa: E402
from cdul_rt.distributed.shards import label_shards, read_shards  # noqa: E402
from cdul_rt.errors import CdulError  # noqa: E402
from cdul_rt.labelfile import read_label_file, read_meta  # noqa: E402
from cdul_rt.pipeline import LabelConfig, label_folder  # noqa: E402

from conftest import make_images  # noqa: E402
from test_ray_label import _JOB  # noqa: E402  (the same driver script, pointed at the simulated cluster)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NODE = {"num_cpus": 1, "object_store_memory": 100 * 1024**2}


def _forget_address() -> None:
    """Cluster() records its address as "the latest cluster" (/tmp/ray/ray_current_cluster), which a bare
    ray.init() elsewhere on this shared machine would join; remove it."""
    from ray._private.utils import get_ray_address_file

    Path(get_ray_address_file(None)).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    workers = [c.add_node(**NODE) for _ in range(2)]
    _forget_address()
    c.wait_for_nodes()
    ray.init(address=c.address)
    yield c, workers
    ray.shutdown()
    c.shutdown()
    _forget_address()


def tiny_cfg(folder: Path, out: Path, tiny_config: Path, **kw) -> LabelConfig:
    return LabelConfig(input=folder, out=out, model=str(tiny_config), pretrained="none", classes="voc",
                       progress=False, workers=0, **kw)


def _plain(folder: Path, tmp_path: Path, tiny_config: Path):
    out = tmp_path / "plain.jsonl"
    label_folder(tiny_cfg(folder, out, tiny_config, save_parts=True))
    return read_label_file(out)


def _assert_equal_to_plain(out: Path, plain, n: int) -> None:
    dist = read_shards(out)
    assert len(dist.paths) == n == len(set(dist.paths)) and dist.paths == sorted(plain.paths)
    order = [plain.paths.index(p) for p in dist.paths]
    spread = float(np.ptp(plain.scores))  # tolerance relative to the spread of the compared scores
    np.testing.assert_allclose(dist.scores, plain.scores[order], atol=1e-5 * max(spread, 1.0))


def test_job_spreads_over_three_nodes_and_equals_plain_label(tmp_path, tiny_config, cluster):
    c, _ = cluster
    assert len([n for n in ray.nodes() if n["Alive"]]) == 3
    folder, out = tmp_path / "images", tmp_path / "labels.ray"
    n = 24
    make_images(folder, n)
    # the engine made the bottleneck (as with a real model): Ray Data hands a block to the least busy actor, so
    # with an idle-most-of-the-time tiny model one actor could take every block
    s = label_with_ray(tiny_cfg(folder, out, tiny_config, batch_size=2, save_parts=True),
                       actor_cls=marking_actor(tmp_path / "marks", 0.3))
    assert (s.labeled, s.failed) == (n, 0)
    meta = read_meta(out)
    # 3 CPUs: 2 one-CPU engine actors (necessarily on two different 1-CPU nodes) and 1 CPU decoding
    assert meta["cluster"]["actors"] == 2 and meta["cluster"]["decode_tasks"] == 1
    per_node = meta["cluster"]["rows_per_node"]
    assert len(per_node) == 2 and sum(per_node.values()) == n and min(per_node.values()) > 0, per_node
    ids = {n["NodeID"][:12] for n in ray.nodes()}
    assert all(any(i in name for i in ids) for name in per_node)  # rows are counted per Ray node, by id
    _assert_equal_to_plain(out, _plain(folder, tmp_path, tiny_config), n)


def marking_actor(marks: Path, delay: float) -> type:
    """An engine actor that records its node id when it starts and takes ``delay`` s per batch (so a node can be
    removed mid-job); defined in a function so Ray ships it by value."""

    class MarkingActor(LabelActor):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            with open(marks, "a") as f:
                f.write(ray.get_runtime_context().get_node_id() + "\n")

        def __call__(self, batch):
            time.sleep(delay)
            return super().__call__(batch)

    return MarkingActor


def test_a_worker_node_removed_mid_job_still_gives_one_row_per_image(tmp_path, tiny_config, cluster):
    c, workers = cluster
    extra = c.add_node(**NODE)  # 4 one-CPU nodes: 2 actors + 2 decode CPUs; 3 CPUs still fit after the removal
    c.wait_for_nodes()
    folder, out, marks = tmp_path / "images", tmp_path / "labels.ray", tmp_path / "marks"
    n = 40
    make_images(folder, n)
    removed: dict = {}

    def remove_an_engine_node() -> None:
        deadline = time.monotonic() + 300
        while len(label_shards(out)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        engine_nodes = set(marks.read_text().split()) if marks.exists() else set()
        candidates = [w for w in [*workers, extra] if w.node_id in engine_nodes] or [extra]
        victim = candidates[0]
        removed.update(node=victim.node_id, rows_before=len(read_shards(out).paths),
                       engine=victim.node_id in engine_nodes)
        c.remove_node(victim, allow_graceful=False)  # its raylet, actors, tasks and objects die with it
        removed["node_obj"] = victim

    t = threading.Thread(target=remove_an_engine_node)
    t.start()
    try:
        s = label_with_ray(tiny_cfg(folder, out, tiny_config, batch_size=2),
                           RayOptions(actors=2, shard_rows=2, flush_seconds=0.5),
                           actor_cls=marking_actor(marks, 0.3))
    finally:
        t.join()
        victim = removed.get("node_obj")
        lost = [w for w in workers if w is victim]
        for w in lost:  # the module's cluster keeps a head and 2 workers
            workers[workers.index(w)] = c.add_node(**NODE)
        if victim is not extra:
            c.remove_node(extra)
        c.wait_for_nodes()
    print(f"removed node {removed['node'][:12]} (engine actor on it: {removed['engine']}) after "
          f"{removed['rows_before']} of {n} rows")
    assert 0 < removed["rows_before"] < n, removed  # it happened mid-job
    assert removed["engine"]  # an engine actor's node, not only a decode task's
    final = read_shards(out)
    assert sorted(final.paths) == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.*"))
    assert len(final.paths) == n == len(set(final.paths)) and s.labeled + s.skipped == n


def test_driver_killed_mid_job_then_rerun_is_exact(tmp_path, tiny_config, cluster):
    c, _ = cluster
    folder, out = tmp_path / "images", tmp_path / "labels.ray"
    n = 30
    make_images(folder, n)
    script = tmp_path / "job.py"
    script.write_text(_JOB)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script), str(folder), str(out), str(tiny_config), c.address],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 300
    while len(label_shards(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL the driver: Ray ends its job's actors and tasks on every node
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    first = read_shards(out)
    assert 0 < len(first.paths) < n and len(set(first.paths)) == len(first.paths)
    print(f"driver killed after {len(first.paths)} of {n} rows")
    s = label_with_ray(tiny_cfg(folder, out, tiny_config, batch_size=2))  # the same job
    assert s.skipped == len(first.paths) and s.labeled == n - len(first.paths)
    _assert_equal_to_plain(out, _plain(folder, tmp_path, tiny_config), n)


def test_gpu_nodes_get_one_actor_per_gpu_in_the_printed_plan(tmp_path, tiny_config, cluster):
    c, _ = cluster
    gpu_nodes = [c.add_node(num_cpus=1, num_gpus=1, object_store_memory=100 * 1024**2) for _ in range(2)]
    c.wait_for_nodes()
    try:
        folder = tmp_path / "images"
        make_images(folder, 4)
        r = CliRunner().invoke(main, ["label", str(folder), "--model", str(tiny_config), "--pretrained", "none",
                                      "--classes", "voc", "--out", str(tmp_path / "l.ray"), "--cluster", "ray",
                                      "--ray-address", c.address, "--device", "cuda"])
    finally:
        for g in gpu_nodes:
            c.remove_node(g)
    # 5 CPUs and 2 (declared) GPUs: one actor per GPU, the other 3 CPUs decode; printed before anything loads
    assert "ray plan: 2 actor(s) x (1 CPU, 1 GPU), up to 3 decode task(s) x 1 CPU" in r.output, r.output
    assert "one actor per GPU (2 actor(s) on 2 of 2 GPU(s)), 3 of 5 CPU(s) left to decoding" in r.output
    assert "5 node(s)" in r.output and r.output.count("1 CPU, 1 GPU") == 3  # the plan + the 2 GPU nodes
    for g in gpu_nodes:
        assert g.node_id[:12] in r.output
    # there is no real GPU behind the declared ones: the job stops with a clear message, not a traceback
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "CUDA" in r.output or "cuda" in r.output, r.output[-2000:]


def other_files_actor(odd_node: str, other_model: str) -> type:
    """Stands in for a node whose disk holds other model files behind the same path: on ``odd_node`` the actor
    opens ``other_model``."""

    class NodeFilesActor(LabelActor):
        def __init__(self, cfg, expected):
            import dataclasses

            if ray.get_runtime_context().get_node_id() == odd_node:
                cfg = dataclasses.replace(cfg, model=other_model)
            super().__init__(cfg, expected)

    return NodeFilesActor


def test_a_node_with_other_model_files_is_refused_by_name(tmp_path, tiny_config, cluster):
    c, _ = cluster
    # the only node with 2 CPUs: a 2-CPU actor can run nowhere else
    odd = c.add_node(num_cpus=2, object_store_memory=100 * 1024**2)
    c.wait_for_nodes()
    other = tmp_path / "other-clip.json"
    other.write_text(json.dumps({**json.loads(tiny_config.read_text()), "embed_dim": 16}))
    folder = tmp_path / "images"
    make_images(folder, 4)
    try:
        with pytest.raises(CdulError) as info:
            label_with_ray(tiny_cfg(folder, tmp_path / "l.ray", tiny_config, batch_size=2),
                           RayOptions(actors=1, cpus_per_actor=2), actor_cls=other_files_actor(odd.node_id,
                                                                                                str(other)))
    finally:
        c.remove_node(odd)
    msg = str(info.value)
    assert f"Ray node {odd.node_id[:12]}" in msg and "different labeler" in msg and "model" in msg, msg
    assert not read_shards(tmp_path / "l.ray").paths  # nothing of its scores mixed in
