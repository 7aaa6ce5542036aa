"""webdataset tar shards as input: rows named <shard>/<key>, samples streamed from the tar, non-image and corrupt
samples as failures, resume per shard and key, scores equal to the same images as loose files (plain `label`,
and `--cluster ray` where a shard is a unit of work)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("webdataset", reason="needs the webdataset extra: pip install 'cdul-rt[webdataset]'")

from click.testing import CliRunner  # noqa: E402

from cdul_rt.cli import main  # noqa: E402
from cdul_rt.distributed.wds import is_shard_source, iter_samples, list_shards, write_shard  # noqa: E402
from cdul_rt.errors import CdulError  # noqa: E402
from cdul_rt.labelfile import read_label_file  # noqa: E402
from cdul_rt.pipeline import LabelConfig, label_folder  # noqa: E402

from conftest import make_images  # noqa: E402


def make_shards(root: Path, n_shards: int = 3, per_shard: int = 4) -> tuple[Path, dict[str, Path]]:
    """Shards ``root/shards/0000{i}.tar`` of random images (+ a caption json each), a json-only sample and a
    corrupt jpg; returns the folder and ``{row path: the same image as a loose file}``."""
    loose = root / "loose"
    images = make_images(root / "src", n_shards * per_shard)
    shards = root / "shards"
    shards.mkdir(parents=True)
    same: dict[str, Path] = {}
    for s in range(n_shards):
        samples = []
        for j, img in enumerate(images[s * per_shard:(s + 1) * per_shard]):
            key = f"{s:05d}{j:04d}"
            ext = img.suffix.lstrip(".")
            samples.append((key, {ext: img.read_bytes(), "json": json.dumps({"caption": key}).encode()}))
            target = loose / f"{s:05d}" / f"{key}.{ext}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(img.read_bytes())
            same[f"{s:05d}.tar/{key}"] = target
        if s == 1:
            samples.append(("meta_only", {"json": b"{}", "txt": b"no picture here"}))
            samples.append(("corrupt", {"jpg": b"\xff\xd8\xff\xe0 not really a jpeg"}))
        write_shard(shards / f"{s:05d}.tar", samples)
    return shards, same


def tiny_cfg(src, out: Path, tiny_config: Path, **kw) -> LabelConfig:
    return LabelConfig(input=Path(src), out=out, model=str(tiny_config), pretrained="none", classes="voc",
                       progress=False, workers=0, **kw)


def test_brace_patterns_name_shards_and_refuse_missing_ones(tmp_path):
    shards, _ = make_shards(tmp_path, 3, 1)
    pattern = f"{shards}/{{00000..00002}}.tar"
    assert is_shard_source(pattern) and is_shard_source(str(shards / "00000.tar"))
    assert not is_shard_source(str(shards)) and not is_shard_source(f"{shards}/{{a,b}}.jpg")
    assert [n for n, _ in list_shards(pattern)] == ["00000.tar", "00001.tar", "00002.tar"]
    with pytest.raises(CdulError, match=r"1 of 4 shard\(s\) do not exist, e\.g\. .*00003\.tar"):
        list_shards(f"{shards}/{{00000..00003}}.tar")
    samples = list(iter_samples(str(shards / "00001.tar")))
    assert [s.path for s in samples] == ["00001.tar/000010000", "00001.tar/meta_only", "00001.tar/corrupt"]
    assert samples[1].data is None and "no image in the sample (members: json, txt)" in samples[1].error
    assert samples[2].data is not None  # decoding, not reading, fails for it
    skipped = list(iter_samples(str(shards / "00001.tar"), {"000010000", "corrupt"}))
    assert [s.path for s in skipped] == ["00001.tar/meta_only"]


def test_a_truncated_shard_keeps_its_good_samples_and_records_the_rest(tmp_path):
    shards, _ = make_shards(tmp_path, 1, 4)
    whole = (shards / "00000.tar").read_bytes()
    cut = shards / "cut.tar"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    samples = list(iter_samples(str(cut)))
    good = [s for s in samples if s.data is not None]
    assert 1 <= len(good) < 4 and samples[-1].data is None and "unreadable shard after" in samples[-1].error


def test_label_shards_equals_loose_files_and_resumes_per_key(tmp_path, tiny_config):
    shards, same = make_shards(tmp_path)
    pattern = f"{shards}/{{00000..00002}}.tar"
    out = tmp_path / "wds.jsonl"
    r = CliRunner().invoke(main, ["label", pattern, "--model", str(tiny_config), "--pretrained", "none",
                                  "--classes", "voc", "--out", str(out), "-q", "--save-parts", "--batch-size", "3"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "labeled 12 images" in r.output and "2 images could not be read" in r.output
    loose_out = tmp_path / "loose.jsonl"
    label_folder(tiny_cfg(tmp_path / "loose", loose_out, tiny_config, save_parts=True))
    wds, loose = read_label_file(out), read_label_file(loose_out)
    assert sorted(wds.paths) == sorted(same)
    by_loose = {p: i for i, p in enumerate(loose.paths)}
    order = [by_loose[same[p].relative_to(tmp_path / "loose").as_posix()] for p in wds.paths]
    np.testing.assert_allclose(wds.scores, loose.scores[order], atol=1e-6)
    np.testing.assert_allclose(wds.parts["aggregate"], loose.parts["aggregate"][order], atol=1e-6)
    failures = [json.loads(x) for x in Path(f"{out}.failures.jsonl").read_text().splitlines()]
    assert sorted(f["path"] for f in failures) == ["00001.tar/corrupt", "00001.tar/meta_only"]
    assert all(f["reason"] for f in failures)

    # a run cut short: the last 5 rows lost; the rerun labels those 5 only (and retries the 2 failures)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-5]))
    r = CliRunner().invoke(main, ["label", pattern, "--model", str(tiny_config), "--pretrained", "none",
                                  "--classes", "voc", "--out", str(out), "-q", "--save-parts", "--batch-size", "3"],
                           catch_exceptions=False)
    assert r.exit_code == 0 and "labeled 5 images" in r.output and "7 already done" in r.output, r.output
    again = read_label_file(out)
    assert sorted(again.paths) == sorted(same) and len(set(again.paths)) == 12


@pytest.mark.slow
@pytest.mark.ray
def test_ray_job_over_shards_equals_plain_and_resumes_per_key(tmp_path, tiny_config):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from cdul_rt.distributed.ray_label import RayOptions, label_with_ray
    from cdul_rt.distributed.shards import label_shards, read_failures, read_shards

    shards, same = make_shards(tmp_path)
    pattern = f"{shards}/{{00000..00002}}.tar"
    plain_out = tmp_path / "plain.jsonl"
    from cdul_rt.distributed.stream_label import label_source

    label_source(tiny_cfg(pattern, plain_out, tiny_config), pattern)
    plain = read_label_file(plain_out)
    out = tmp_path / "wds.ray"
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2)
    try:
        s = label_with_ray(tiny_cfg(pattern, out, tiny_config, batch_size=2), RayOptions(shard_rows=3), pattern)
        assert (s.labeled, s.failed) == (12, 2)
        dist = read_shards(out)
        assert dist.paths == sorted(same)
        np.testing.assert_allclose(dist.scores, plain.scores[[plain.paths.index(p) for p in dist.paths]],
                                   atol=1e-5)
        assert [p for p, _ in read_failures(out)] == ["00001.tar/corrupt", "00001.tar/meta_only"]
        # lose one output shard (rows of several keys, maybe of two tar shards): only those are labeled again
        lost = read_label_file(label_shards(out)[1]).paths
        label_shards(out)[1].unlink()
        s = label_with_ray(tiny_cfg(pattern, out, tiny_config, batch_size=2), RayOptions(shard_rows=3), pattern)
        assert (s.labeled, s.failed, s.skipped) == (len(lost), 0, 14 - len(lost))
        assert read_shards(out).paths == sorted(same)
    finally:
        if started:
            ray.shutdown()
