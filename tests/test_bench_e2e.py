"""The end-to-end folder benchmark of bench/gpu_check.sh and `cdul-rt bench --device cuda`: every contender's code
run here as a small CPU dry run (the GPU figures come from a GPU), and the refusal without CUDA."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cdul_rt.cli import main

torch = pytest.importorskip("torch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_bench_device_cuda_without_cuda_says_so(tmp_path):
    r = CliRunner().invoke(main, ["bench", "--device", "cuda", "--work-dir", str(tmp_path)], catch_exceptions=False)
    assert r.exit_code != 0 and "CUDA" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_e2e_dry_run_on_cpu(tmp_path):
    """Every row runs and agrees with the naive loop (same seeded weights, same crops): the parity column works."""
    from cdul_rt.bench.e2e import E2EConfig, format_rows, run_e2e

    cfg = E2EConfig(model="cdul-tiny", device="cpu", images=6, image_size=(160, 120), batch_size=4, workers=1,
                    naive_images=3, work_dir=tmp_path)
    result = run_e2e(cfg)
    rows = {r.contender.split(" (")[0]: r for r in result.rows}
    assert [r.status for r in result.rows] == ["ok"] * 5, format_rows(result.rows)
    assert set(rows) == {"naive loop", "torch DataLoader", "cdul-rt label --decode cpu", "cdul-rt label --decode gpu",
                         "visual encoder alone, fp32, 40 crops per call, on device"}
    for name, r in rows.items():
        assert r.images_per_s > 0
        if not name.startswith("visual"):
            assert r.top1_agreement == 1.0 and r.parity_max_abs <= 1e-3, name
    assert rows["cdul-rt label --decode cpu"].images == 6 and rows["cdul-rt label --decode cpu"].wall_s > 0
    meta = json.loads((tmp_path / "label-gpu.jsonl.meta.json").read_text())
    assert meta["config"]["decode"] == "gpu"  # the device path ran (on CPU tensors)
    for decode in ("cpu", "gpu"):  # the label rows run the torch encoder the other rows time, not the default rule's
        assert json.loads((tmp_path / f"label-{decode}.jsonl.meta.json").read_text())["config"]["runtime"] == "torch"
    assert "| contender |" in format_rows(result.rows, markdown=True)


@pytest.mark.slow
def test_device_parity_script_runs(tmp_path):
    """bench/device_parity.py, the reproduce command of BENCHMARKS.md's crop and score parity tables, still runs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "bench" / "device_parity.py"), "--images", "2",
                           "--score-images", "2", "--models", "cdul-tiny"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| cdul-tiny" in proc.stdout and "1.000 |" in proc.stdout
