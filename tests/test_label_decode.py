"""``label --decode {auto,cpu,gpu}``: refusal without CUDA, auto == cpu here, and the device path run end to end on
CPU tensors against the CPU path (same rows, same failures, scores within a grey level's worth)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cdul_rt.bench.images import write_jpeg_folder
from cdul_rt.cli import main
from cdul_rt.errors import CdulError
from cdul_rt.labelfile import read_label_file

from conftest import make_broken

torch = pytest.importorskip("torch")

from cdul_rt.devicedecode import ON_CPU_TENSORS  # noqa: E402
from cdul_rt.pipeline import LabelConfig, label_folder  # noqa: E402

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@no_cuda
def test_decode_gpu_without_cuda_is_refused_at_once(tmp_path):
    (tmp_path / "imgs").mkdir()
    # the model does not exist: the refusal comes before anything is loaded
    r = cli("label", str(tmp_path / "imgs"), "--model", "no-such-model", "--decode", "gpu", "-q",
            "--out", str(tmp_path / "x.jsonl"))
    assert r.exit_code != 0
    assert "CUDA" in r.output and "--decode cpu" in r.output and "Traceback" not in r.output
    with pytest.raises(CdulError, match="CUDA"):
        LabelConfig(input=tmp_path, out=tmp_path / "y.jsonl", decode="gpu", device="cuda").validate()


def test_decode_choices_are_checked(tmp_path):
    with pytest.raises(CdulError, match="--decode must be one of auto, cpu, gpu"):
        LabelConfig(input=tmp_path, out=tmp_path / "y.jsonl", decode="nvjpeg").validate()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("photos")
    write_jpeg_folder(root, 10, size=(160, 120), seed=3)
    write_jpeg_folder(root / "sub", 3, size=(90, 130), seed=4)
    from PIL import Image

    Image.open(root / "bench_000001.jpg").save(root / "as_png.png")
    from test_devicedecode import corrupt_huffman_jpeg

    corrupt_huffman_jpeg(root / "bench_000004_bad.jpg")  # inside the first decoded batch
    broken = make_broken(root)
    return root, [*broken, "bench_000004_bad.jpg"]


def run(folder: Path, out: Path, decode: str, **kw):
    cfg = LabelConfig(input=folder, out=out, model="cdul-tiny", classes="coco", batch_size=4, workers=0,
                      progress=False, decode=decode, **kw)
    return label_folder(cfg)


@no_cuda
def test_auto_is_exactly_cpu_without_cuda(tmp_path, folder):
    root, _ = folder
    a, b = run(root, tmp_path / "auto.jsonl", "auto"), run(root, tmp_path / "cpu.jsonl", "cpu")
    assert a.labeled == b.labeled == 14
    ta, tb = read_label_file(tmp_path / "auto.jsonl"), read_label_file(tmp_path / "cpu.jsonl")
    assert list(ta.paths) == list(tb.paths) and np.array_equal(ta.scores, tb.scores)
    for name in ("auto", "cpu"):  # the CPU path records nothing new: label files from before --decode resume
        assert "decode" not in json.loads((tmp_path / f"{name}.jsonl.meta.json").read_text())["config"]


def failures(out: Path) -> dict[str, str]:
    lines = Path(f"{out}.failures.jsonl").read_text().splitlines()
    return {d["path"]: d["reason"] for d in map(json.loads, lines)}


def test_device_path_end_to_end_matches_cpu_path(tmp_path, folder):
    root, broken = folder
    cpu_out, dev_out = tmp_path / "cpu.jsonl", tmp_path / "dev.jsonl"
    # the torch runtime: what --decode gpu feeds on CUDA (crops stay on the device, runner.infer_tensor)
    cpu, dev = run(root, cpu_out, "cpu", runtime="torch"), run(root, dev_out, ON_CPU_TENSORS, runtime="torch")
    assert dev.labeled == cpu.labeled == 14 and dev.failed == cpu.failed == len(broken)
    assert failures(dev_out) == failures(cpu_out) and set(failures(dev_out)) == set(broken)
    tc, td = read_label_file(cpu_out), read_label_file(dev_out)
    assert list(td.paths) == list(tc.paths)  # the same rows in the same order
    diff = np.abs(td.scores - tc.scores).max()
    assert (td.scores.argmax(1) == tc.scores.argmax(1)).all()
    assert diff <= 5e-3 * np.ptp(tc.scores)  # measured ~1e-3 of the spread: crops <= 1-2 grey levels apart
    config = json.loads(Path(f"{dev_out}.meta.json").read_text())["config"]
    assert config["decode"] == "gpu" and config["runtime"] == "torch"


def test_a_resume_never_mixes_decode_paths(tmp_path, folder):
    root, _ = folder
    run(root, tmp_path / "dev.jsonl", ON_CPU_TENSORS)
    with pytest.raises(CdulError, match=r"decode differ"):
        run(root, tmp_path / "dev.jsonl", "cpu")
    run(root, tmp_path / "cpu.jsonl", "cpu")
    with pytest.raises(CdulError, match=r"decode differ"):
        run(root, tmp_path / "cpu.jsonl", ON_CPU_TENSORS)
    again = run(root, tmp_path / "dev.jsonl", ON_CPU_TENSORS)  # same path: resumes, nothing left to do
    assert again.labeled == 0 and again.skipped == 14 and again.failed == 4  # failed files are retried (issue 13)



@no_cuda
def test_resolve_without_cuda():
    from cdul_rt.devicedecode import resolve_decode
    from cdul_rt.preprocess import PreprocessConfig

    pp = PreprocessConfig()
    assert resolve_decode("auto", "cuda", pp) is None and resolve_decode("auto", "cpu", pp) is None
    assert resolve_decode("cpu", "cuda", pp) is None and resolve_decode(ON_CPU_TENSORS, "cpu", pp) == "cpu"
    with pytest.raises(CdulError, match="CUDA"):
        resolve_decode("gpu", "cuda", pp)


def test_decode_choices_without_torch():
    """A torch-free install (onnxruntime or TensorRT on a GPU server): `auto` is the CPU path, `gpu` a clear error."""
    import subprocess
    import sys

    script = """
import sys
sys.modules["torch"] = None
from cdul_rt.devicedecode import check_decode, resolve_decode
from cdul_rt.errors import CdulError
from cdul_rt.preprocess import PreprocessConfig
assert resolve_decode("auto", "cuda:0", PreprocessConfig()) is None
try:
    check_decode("gpu", "cuda:0")
except CdulError as exc:
    print(exc)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch is not installed" in proc.stdout and "--decode cpu" in proc.stdout


def test_gpu_out_of_memory_is_a_clear_error(tmp_path, folder, monkeypatch):
    from cdul_rt import devicecrops

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(devicecrops, "crops_uint8", oom)
    root, _ = folder
    with pytest.raises(CdulError, match=r"ran out of memory.*--batch-size.*--decode cpu"):
        run(root, tmp_path / "oom.jsonl", ON_CPU_TENSORS, runtime="torch")
