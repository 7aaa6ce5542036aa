"""cdul_rt.runmeta as the one public run-metadata module: write, compare on resume, name what differs."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from cdul_rt.errors import CdulError
from cdul_rt.runmeta import (check_recorded_config, check_resume, config_differences, update_meta, write_run_meta)

CONFIG = {"classes": ["cat", "dog"], "model": "m", "grid": 3, "zeta": 0.25, "lambda": 0.5, "mode": "gl-maxmin"}


def _cfg(tmp_path: Path, **kw) -> SimpleNamespace:
    base = dict(out=tmp_path / "l.jsonl", input=tmp_path / "images", save_embeddings=False, model="m",
                pretrained=None, weights=None, engine_dir=None)
    return SimpleNamespace(**{**base, **kw})


def test_config_differences_names_changed_added_and_dropped_keys():
    assert config_differences(CONFIG, dict(CONFIG)) == []
    new = {**CONFIG, "zeta": 0.3, "top_k": 2}
    del new["mode"]
    assert config_differences(CONFIG, new) == ["mode", "top_k", "zeta"]


def test_a_written_meta_resumes_only_with_the_same_config_and_folder(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.out.write_text('{"path": "a.jpg"}\n')
    write_run_meta(cfg, CONFIG, "running")
    summary = SimpleNamespace(labeled=3, skipped=1, failed=0, seconds=2.0, images_per_second=1.5)
    write_run_meta(cfg, CONFIG, "complete", summary)
    meta = json.loads((tmp_path / "l.jsonl.meta.json").read_text())
    assert meta["status"] == "complete" and meta["config"] == CONFIG and "started" in meta
    assert meta["last_run"] == {"labeled": 3, "skipped": 1, "failed": 0, "seconds": 2.0, "images_per_second": 1.5}
    check_resume(cfg.out, cfg.input, dict(CONFIG))  # the same run: nothing to refuse
    with pytest.raises(CdulError, match=r"different configuration \(grid, zeta differ\)"):
        check_resume(cfg.out, cfg.input, {**CONFIG, "grid": 2, "zeta": 0.1})
    with pytest.raises(CdulError, match="holds labels of"):
        check_resume(cfg.out, tmp_path / "other", CONFIG)
    check_recorded_config(cfg.out, CONFIG)  # the Ray path compares the configuration only
    with pytest.raises(CdulError, match=r"\(mode differ\)"):
        check_recorded_config(cfg.out, {**CONFIG, "mode": "global"})


def test_embeddings_meta_and_update_meta_keep_what_is_there(tmp_path):
    cfg = _cfg(tmp_path, save_embeddings=True, engine_dir=tmp_path / "eng")
    write_run_meta(cfg, CONFIG, "running")
    update_meta(cfg.out, {"cluster": {"engine": "ray"}, "shards": 2})
    meta = json.loads((tmp_path / "l.jsonl.meta.json").read_text())
    assert meta["embeddings"]["engine_dir"] == str((tmp_path / "eng").resolve())
    assert meta["cluster"] == {"engine": "ray"} and meta["shards"] == 2 and meta["config"] == CONFIG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.jsonl.meta.json"]  # no temporary left behind


def test_no_module_imports_a_private_name_of_the_pipeline_or_runmeta():
    """The label front ends (folder, URL, --server, Ray, the Python API) share run metadata through public names."""
    root = Path(__file__).resolve().parents[1]
    found = []
    for path in [*(root / "cdul_rt").rglob("*.py"), *(root / "bench").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in ("cdul_rt.pipeline", "cdul_rt.runmeta"):
                found += [f"{path.relative_to(root)}: {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found
