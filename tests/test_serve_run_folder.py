"""`cdul-rt serve`'s run folder (Triton's log and PyTriton's ~25 MB workspace): named after the server's pid, and
the folders of servers that died by SIGKILL are removed by the next server (no PyTriton needed here; the end-to-end
check is tests/test_serve.py::test_a_sigkilled_servers_folder_is_removed_by_the_next_server)."""

import subprocess
import sys

from cdul_rt.serve.server import RUN_PREFIX, run_folder


def test_folders_of_dead_servers_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"{RUN_PREFIX}{dead_pid}-abc"
    (stale / "workspace" / "tritonserver").mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = tmp_path / f"{RUN_PREFIX}{live.pid}-def"
        running.mkdir()
        unrelated = tmp_path / f"{RUN_PREFIX}notapid-x"
        unrelated.mkdir()
        mine = run_folder()
        assert mine.parent == tmp_path and mine.name.startswith(f"{RUN_PREFIX}{__import__('os').getpid()}-")
        assert not stale.exists()
        assert running.is_dir() and unrelated.is_dir()
    finally:
        live.kill()
        live.wait()
