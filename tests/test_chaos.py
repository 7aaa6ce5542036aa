"""A quick run of the chaos soak (bench/chaos.py, issue 13): SIGKILLs of `label` and of a decode worker plus a
disk that fills up (a real tmpfs as root, else injected ENOSPC), on a folder with every kind of bad file; the full
soak's counts are in BENCHMARKS.md."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.slow
def test_quick_chaos_soak_loses_nothing():
    import chaos

    (c,) = chaos.soak(kills=2, fills=1, formats=("csv",), images=4, workers=2, batch_size=2, worker_kills=1,
                      seed=0, log=lambda m: None)
    assert c.main_kills == 2 and c.worker_kills == 1 and c.disk_fills == 1, c
    assert c.final_rc == 0 and c.rows == c.rows_expected == 8, c  # 4 plain + 4 hostile-but-valid images
    assert (c.rows_lost, c.rows_duplicated, c.rows_unexpected) == (0, 0, 0), c
    assert c.score_max_diff <= 1e-6, c
    assert (c.bad_files_missing_from_failures, c.failures_duplicated, c.good_files_in_failures) == (0, 0, 0), c
    assert (c.worker_kill_aborts, c.hangs, c.disk_full_tracebacks) == (0, 0, 0), c
    assert c.processes_left == 0, c
