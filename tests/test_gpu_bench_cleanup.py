"""bench/gpu_bench.py's end-to-end section removes its generated folder (2000 JPEGs and label outputs on a GPU
server), also when the benchmark fails."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench_under_test", ROOT / "bench" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fails", [False, True])
def test_e2e_section_removes_its_work_folder(monkeypatch, fails):
    from cdul_rt.bench import e2e

    gpu_bench = load_gpu_bench()
    seen = []

    def fake_run(cfg, log):
        (cfg.work_dir / "images").mkdir(parents=True)
        (cfg.work_dir / "images" / "0.jpg").write_bytes(b"x")
        seen.append(cfg.work_dir)
        if fails:
            raise RuntimeError("contender crashed")
        return e2e.E2EResult([], {}, {})

    monkeypatch.setattr(e2e, "run_e2e", fake_run)
    report = types.SimpleNamespace(left=lambda: 100.0, data={})
    args = types.SimpleNamespace(device="cpu", model="cdul-tiny", e2e_images=None, e2e_batch=None,
                                 e2e_workers=None)
    if fails:
        with pytest.raises(RuntimeError):
            gpu_bench.e2e_section(report, args)
    else:
        gpu_bench.e2e_section(report, args)
    assert seen and not seen[0].exists()
