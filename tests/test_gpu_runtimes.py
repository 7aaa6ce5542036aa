"""GPU paths: device strings, onnxruntime provider choice, clear errors without TensorRT or a GPU (run everywhere),
and the real thing on an NVIDIA GPU (marked ``gpu`` / ``trt``; skipped where there is none): torch CUDA fp16 and
onnxruntime CUDA parity against the CPU fp32 reference, a TensorRT fp16 build that passes its own fp16 check and
matches onnxruntime, and the engine cache rebuilding on a changed key."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cdul_rt.engines.gpu import (
    ORT_CPU,
    ORT_CUDA,
    ORT_TRT,
    Device,
    ort_providers,
    parse_device,
    torch_cuda_check,
    trt_profile_string,
)
from cdul_rt.errors import CdulError


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
        return True
    except Exception:
        return False


def _cuda_devices() -> int:
    from cdul_rt.engines.trt.cuda import device_count

    return device_count()


def _torch_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


needs_gpu = pytest.mark.skipif(not _torch_cuda(), reason="needs an NVIDIA GPU and a CUDA build of torch")
needs_trt = pytest.mark.skipif(not (_has_tensorrt() and _cuda_devices() > 0), reason="needs TensorRT and a GPU")


# -- everywhere ------------------------------------------------------------------------------------------------------
def test_parse_device():
    assert parse_device("cpu") == Device("cpu") and str(parse_device("CUDA")) == "cuda:0"
    assert parse_device("cuda:3") == Device("cuda", 3) and parse_device("gpu:1") == Device("cuda", 1)
    with pytest.raises(CdulError, match="did you mean 'cuda'"):
        parse_device("cdua")
    with pytest.raises(CdulError, match="must be a number"):
        parse_device("cuda:x")
    with pytest.raises(CdulError, match="takes no index"):
        parse_device("cpu:0")


def test_ort_providers_order_options_and_refusal(tmp_path):
    assert ort_providers("cpu", available=[ORT_CPU]) == [ORT_CPU]
    with pytest.raises(CdulError, match="onnxruntime-gpu"):
        ort_providers("cuda", available=[ORT_CPU])  # never a silent CPU fallback when a GPU was asked for
    profile = {"crops": ((10, 3, 224, 224), (80, 3, 224, 224), (320, 3, 224, 224)),
               "text_embeddings": ((1, 512), (80, 512), (1024, 512))}
    provs = ort_providers("cuda:1", "fp16", use_tensorrt=True, cache_dir=tmp_path, profile=profile,
                          available=[ORT_TRT, ORT_CUDA, ORT_CPU])
    assert [p if isinstance(p, str) else p[0] for p in provs] == [ORT_TRT, ORT_CUDA, ORT_CPU]
    trt_opts, cuda_opts = provs[0][1], provs[1][1]
    assert trt_opts["device_id"] == "1" and cuda_opts["device_id"] == "1"
    assert trt_opts["trt_fp16_enable"] == "True" and trt_opts["trt_engine_cache_enable"] == "True"
    assert trt_opts["trt_engine_cache_path"].startswith(str(tmp_path))
    assert trt_opts["trt_profile_opt_shapes"] == "crops:80x3x224x224,text_embeddings:80x512"
    assert trt_opts["trt_profile_max_shapes"] == "crops:320x3x224x224,text_embeddings:1024x512"
    no_trt = ort_providers("cuda", "fp32", available=[ORT_TRT, ORT_CUDA, ORT_CPU])  # the EP only when asked for
    assert [p if isinstance(p, str) else p[0] for p in no_trt] == [ORT_CUDA, ORT_CPU]
    with pytest.raises(CdulError, match="--ort-tensorrt needs onnxruntime's TensorRT execution provider"):
        ort_providers("gpu", use_tensorrt=True, available=[ORT_CUDA, ORT_CPU])
    with pytest.raises(CdulError, match="add --device cuda"):
        ort_providers("cpu", use_tensorrt=True, available=[ORT_TRT, ORT_CUDA, ORT_CPU])
    assert ort_providers("cuda", wanted="CPUExecutionProvider", available=[ORT_CPU]) == [ORT_CPU]
    assert trt_profile_string({"b": (2, 3), "a": (1,)}) == "a:1,b:2x3"


def test_label_ort_tensorrt_gives_the_labeler_the_trt_ep_with_an_image_sized_profile(tmp_path, monkeypatch):
    """Issue 14 item 9: `--ort-tensorrt` puts the TensorRT EP (fp16, caches, profile in images of 1+g^2 crops and
    the vocabulary's classes) before CUDA for the labeler graph; the text graph stays on CUDA; one picker."""
    import types

    pytest.importorskip("onnxruntime")
    import onnxruntime

    from cdul_rt.engines.onnxrt.loader import labeler_providers

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [ORT_TRT, ORT_CUDA, ORT_CPU])
    monkeypatch.setenv("CDUL_RT_CACHE", str(tmp_path))
    manifest = types.SimpleNamespace(image_size=224, embed_dim=512, labeler={"grid": 3}, precision="fp16")
    cfg = types.SimpleNamespace(device="cuda:0", batch_size=8, extra={"ort_tensorrt": True})
    text, labeler = labeler_providers(cfg, manifest, classes=20)
    assert [p if isinstance(p, str) else p[0] for p in text] == [ORT_CUDA, ORT_CPU]
    assert [p if isinstance(p, str) else p[0] for p in labeler] == [ORT_TRT, ORT_CUDA, ORT_CPU]
    opts = labeler[0][1]
    assert opts["trt_fp16_enable"] == "True" and opts["trt_timing_cache_enable"] == "True"
    assert opts["trt_engine_cache_path"].startswith(str(tmp_path))
    assert opts["trt_profile_min_shapes"] == "crops:10x3x224x224,text_embeddings:1x512"
    assert opts["trt_profile_opt_shapes"] == "crops:80x3x224x224,text_embeddings:20x512"
    assert opts["trt_profile_max_shapes"] == "crops:320x3x224x224,text_embeddings:1024x512"
    cfg.extra = {}
    assert labeler_providers(cfg, manifest, 20)[1] == text  # without the option: CUDA


def test_ort_tensorrt_is_refused_where_it_would_be_ignored(tmp_path, image_folder):
    from cdul_rt.cli import main

    for extra in (["--runtime", "torch"], ["--runtime", "onnxruntime", "--device", "cpu"]):
        r = CliRunner().invoke(main, ["label", str(image_folder), "--ort-tensorrt", *extra,
                                      "--out", str(tmp_path / "o.jsonl"), "-q", "-j", "0"])
        assert r.exit_code == 2 and "--ort-tensorrt" in r.output and "Traceback" not in r.output, r.output


def test_onnxruntime_label_path_uses_the_one_provider_picker(tmp_path, monkeypatch, image_folder, tiny_config):
    pytest.importorskip("onnxruntime")
    from cdul_rt.cli import main
    from cdul_rt.engines import gpu
    from cdul_rt.export.clip import ExportOptions, export_clip

    art = tmp_path / "art"
    export_clip(ExportOptions(out=art, model=str(tiny_config), pretrained="none", classes="voc"), log=lambda m: None)
    calls = []
    real = gpu.ort_providers
    monkeypatch.setattr(gpu, "ort_providers", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    r = CliRunner().invoke(main, ["label", str(image_folder), "--runtime", "onnxruntime", "--engine-dir", str(art),
                                  "--classes", "voc", "--out", str(tmp_path / "o.jsonl"), "-q", "-j", "0"])
    assert r.exit_code == 0, r.output
    assert calls and calls[0][0][0] == "cpu"


@pytest.mark.parametrize("device", ["gpu", "cuda", "cuda:1"])
def test_torch_gpu_requests_go_through_require_torch_cuda(tmp_path, monkeypatch, image_folder, tiny_config,
                                                          device):
    """Issue 14 item 10: `--device gpu` (an alias torch does not know) and a CPU-only torch with `--device cuda`
    give cdul-rt's message, not torch's."""
    import torch

    from cdul_rt.cli import main
    from cdul_rt.engines.gpu import require_torch_cuda

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU-only build of torch
    r = CliRunner().invoke(main, ["label", str(image_folder), "--model", str(tiny_config), "--pretrained", "none",
                                  "--classes", "voc", "--device", device, "--decode", "cpu",
                                  "--out", str(tmp_path / "o.jsonl"), "-q", "-j", "0"])
    assert r.exit_code == 2 and "is a CPU-only build; install a CUDA build of torch" in r.output, r.output
    assert "Traceback" not in r.output
    from cdul_rt.train.trainer import _device

    with pytest.raises(CdulError, match="CPU-only build"):
        _device(device)
    monkeypatch.setattr("cdul_rt.engines.gpu.torch_cuda_check", lambda dev: None)  # as on a GPU machine
    assert require_torch_cuda("gpu") == "cuda:0" and require_torch_cuda("cuda:1") == "cuda:1"


@pytest.mark.skipif(_cuda_devices() > 0, reason="this machine has a GPU")
def test_no_gpu_is_a_clear_error():
    from cdul_rt.engines.trt.cuda import device_info

    with pytest.raises(CdulError, match="no CUDA device is visible|CUDA cannot start|cuda-python is not installed"):
        device_info(0)
    if _torch_cuda() is False:
        reason = torch_cuda_check("cuda")
        assert reason and ("no CUDA device" in reason or "CPU-only" in reason)
    assert torch_cuda_check("cpu") is None


def test_driver_advice_names_what_to_install():
    """Issue 14 item 2: an old driver with the CUDA 13 bindings says to install the CUDA 12 extra."""
    from cdul_rt.engines.trt.cuda import driver_advice

    r535 = driver_advice("cudaErrorInsufficientDriver", 12020, "13.0.1")  # R535 runs CUDA 12.2
    assert "supports CUDA up to 12.2" in r535 and "cuda-python 13.0.1 is built for CUDA 13" in r535
    assert "pip install 'cdul-rt[tensorrt-cu12]'" in r535 and "580.65" in r535
    jetpack6 = driver_advice("cudaErrorInsufficientDriver", 12060, "13.5.0")  # Orin, JetPack 6 = CUDA 12.6
    assert "tensorrt-cu12" in jetpack6
    assert "update the driver to >= 525.60.13" in driver_advice("e", 11080, "12.6.0")
    assert "no NVIDIA driver was found" in driver_advice("e", 0, "12.6.0")
    assert "pip install" not in driver_advice("e", 13000, "13.0.0")  # matching majors: not an install problem


def test_device_info_reads_the_driver_version_on_failure(monkeypatch):
    """The real call sequence of cuda.bindings.runtime (cudaGetDeviceCount failing, then cudaDriverGetVersion),
    with the error codes a CUDA 13 runtime returns on a CUDA 12.4 driver."""
    import types

    from cdul_rt.engines.trt import cuda

    err = types.SimpleNamespace(cudaSuccess=0, cudaErrorInsufficientDriver=types.SimpleNamespace(
        name="cudaErrorInsufficientDriver"))
    fake = types.SimpleNamespace(
        cudaError_t=err, cudaGetDeviceCount=lambda: (err.cudaErrorInsufficientDriver, None),
        cudaDriverGetVersion=lambda: (0, 12040),
        cudaGetErrorString=lambda e: (0, b"CUDA driver version is insufficient for CUDA runtime version"))
    monkeypatch.setattr(cuda, "cudart", lambda: fake)
    monkeypatch.setattr(cuda, "bindings_version", lambda: "13.5.0")
    with pytest.raises(CdulError, match=r"supports CUDA up to 12.4.*cdul-rt\[tensorrt-cu12\]"):
        cuda.device_info(0)


def test_tensorrt_extras_are_pinned_per_cuda_major():
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert "cuda-python>=12.3,<13" in extras["tensorrt-cu12"] and "tensorrt-cu12>=10" in extras["tensorrt-cu12"]
    assert "cuda-python>=13,<14" in extras["tensorrt-cu13"] and "tensorrt-cu13>=10" in extras["tensorrt-cu13"]
    assert extras["tensorrt"] == ["cdul-rt[tensorrt-cu12]"]  # the default runs on the most drivers


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed here")
def test_label_runtime_tensorrt_without_tensorrt_names_the_extra(tmp_path, image_folder, tiny_config):
    from cdul_rt.cli import main

    args = ["label", str(image_folder), "--model", str(tiny_config), "--pretrained", "none", "--classes", "voc",
            "--out", str(tmp_path / "l.jsonl"), "--runtime", "tensorrt", "--device", "cuda", "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    assert "cdul-rt[tensorrt]" in r.output and "--runtime onnxruntime" in r.output
    r = CliRunner().invoke(main, [*args[:-3], "--device", "cpu", "--quiet"])
    assert r.exit_code == 2 and "runs on an NVIDIA GPU" in r.output


def test_trt_runner_without_tensorrt_or_gpu_fails_on_activate(tmp_path):
    from cdul_rt.engines.trt.runner import TrtLabelerRunner

    runner = TrtLabelerRunner(tmp_path / "labeler.fp16.plan", grid=3, image_size=32, embed_dim=32, zeta=0.3, lam=1.0)
    if _has_tensorrt() and _cuda_devices() > 0:
        with pytest.raises(CdulError, match="does not exist"):
            runner.activate()
    else:
        with pytest.raises(CdulError, match="TensorRT is not available|no CUDA device|CUDA cannot start"):
            runner.activate()
    assert not runner.is_active


# -- on a GPU ------------------------------------------------------------------------------------------------------
def _crops(n_images: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n_images * 10, 3, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_bundle(tiny_config):
    from cdul_rt.models import load_clip
    from cdul_rt.presets import resolve_model

    return load_clip(resolve_model(str(tiny_config), "none"))


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):  # module scope twin of conftest's fixture (module fixtures cannot use session ones)
    import json

    from conftest import TINY_CLIP_CONFIG

    path = tmp_path_factory.mktemp("gpu-models") / "tiny-test-clip.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    return path


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_torch_cuda_matches_cpu_reference(tiny_bundle, precision, tol):
    from cdul_rt.engines.torch.runner import TorchLabelerRunner

    text = np.random.default_rng(1).normal(size=(20, 32)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    feed = {"crops": _crops(3, tiny_bundle.preprocess.size), "text_embeddings": text}
    with TorchLabelerRunner(tiny_bundle, precision="fp32", device="cpu") as ref:
        want = ref.infer(feed)
    with TorchLabelerRunner(tiny_bundle, precision=precision, device="cuda") as gpu:
        got = gpu.infer(feed)
    for name in want:
        assert np.abs(want[name] - got[name]).max() <= tol, name
    assert (want["S_final"].argmax(1) == got["S_final"].argmax(1)).mean() >= 0.99


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, tiny_config):
    from cdul_rt.export.clip import ExportOptions, export_clip

    out = {}
    for precision in ("fp32", "fp16"):
        folder = tmp_path_factory.mktemp(f"export-{precision}")
        export_clip(ExportOptions(out=folder, model=str(tiny_config), pretrained="none", classes="voc",
                                  precision=precision), log=lambda m: None)
        out[precision] = folder
    return out


def _ort_reference(folder, feed):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(folder / "labeler.onnx"), providers=[ORT_CPU])
    names = [i.name for i in sess.get_inputs()]
    full = {**feed, "zeta": np.array([0.3], np.float32), "lambda": np.array([1.0], np.float32)}
    return dict(zip(["S_final", "S_global", "S_ag"], sess.run(["S_final", "S_global", "S_ag"],
                                                              {n: full[n] for n in names})))


def _ort_cuda() -> bool:
    try:
        import onnxruntime as ort

        return ORT_CUDA in ort.get_available_providers() and _cuda_devices() > 0
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _ort_cuda(), reason="needs onnxruntime-gpu and a GPU")
def test_onnxruntime_cuda_matches_cpu(tiny_export):
    import onnxruntime as ort

    folder = tiny_export["fp32"]
    feed = {"crops": _crops(4, 32), "text_embeddings": np.load(next((folder / "text_embeddings").glob("*.npy")))}
    want = _ort_reference(folder, feed)
    sess = ort.InferenceSession(str(folder / "labeler.onnx"),
                                providers=ort_providers("cuda", "fp32", use_tensorrt=False))
    full = {**feed, "zeta": np.array([0.3], np.float32), "lambda": np.array([1.0], np.float32)}
    got = sess.run(["S_final"], {i.name: full[i.name] for i in sess.get_inputs()})[0]
    assert np.abs(got - want["S_final"]).max() <= 1e-4


@pytest.mark.trt
@pytest.mark.gpu
@needs_trt
def test_tensorrt_fp16_engine_is_fp16_matches_onnxruntime_and_rebuilds(tiny_export, tmp_path):
    from cdul_rt.engines.trt.profiles import ProfileSpec
    from cdul_rt.engines.trt.runner import TrtLabelerRunner
    from cdul_rt.engines.trt.build import TrtBuildConfig, build_engines

    fp32, fp16 = tiny_export["fp32"], tiny_export["fp16"]
    logs: list[str] = []
    # strongly typed (TRT 10 and 11): with a tiny model only the network types can prove fp16 (engine size is
    # dominated by overhead, and TRT 10 may fuse the whole encoder into one opaque Myelin layer)
    cfg = TrtBuildConfig(precision="fp16", typing="strong", profile=ProfileSpec(1, 4, 8, 1, 20, 64),
                         workspace_gib=1.0)
    built = build_engines(fp32, tmp_path / "engines", ("labeler", "visual"), cfg, extra_dirs=(fp16,),
                          log=logs.append)
    assert {b.kind for b in built} == {"labeler", "visual"} and all(b.rebuilt for b in built)
    assert all(b.precision_check for b in built)  # the fp16 check ran and passed
    again = build_engines(fp32, tmp_path / "engines", ("labeler",), cfg, extra_dirs=(fp16,), log=logs.append)
    assert not again[0].rebuilt  # cache hit
    bigger = TrtBuildConfig(precision="fp16", typing="strong", profile=ProfileSpec(1, 4, 16, 1, 20, 64),
                            workspace_gib=1.0)
    rebuilt = build_engines(fp32, tmp_path / "engines", ("labeler",), bigger, extra_dirs=(fp16,), log=logs.append)
    assert rebuilt[0].rebuilt and "profile changed" in rebuilt[0].reason
    text = np.load(next((fp32 / "text_embeddings").glob("*.npy")))
    feed = {"crops": _crops(11, 32, seed=5), "text_embeddings": text}  # 11 images: 3 chunks of <= 4, overlapped
    want = _ort_reference(fp32, feed)
    with TrtLabelerRunner(rebuilt[0].plan, grid=3, image_size=32, embed_dim=32, zeta=0.3, lam=1.0,
                          chunk_images=4) as runner:
        got = runner.infer(feed)
        again = runner.infer(feed)  # buffers reused across calls
    for name in want:
        assert got[name].shape == want[name].shape
        assert np.abs(got[name] - want[name]).max() <= 2e-2, name
    np.testing.assert_array_equal(got["S_final"], again["S_final"])
    shutil.rmtree(tmp_path / "engines")


def test_tensorrt_and_triton_paths_never_import_torch(tmp_path):
    """The edge install has no torch: the TensorRT runtime, the engine builder and the Triton writer must not
    import it. Run them in a subprocess where importing torch fails."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    from test_triton_repository import make_artifacts

    art = make_artifacts(tmp_path / "art")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        from pathlib import Path
        from cdul_rt.errors import CdulError
        from cdul_rt.engines.trt import open_labeler
        from cdul_rt.engines.trt.runner import TrtLabelerRunner
        from cdul_rt.engines.trt.build import build_engines, plan_sources
        from cdul_rt.export.triton import TritonOptions, write_triton_repository
        write_triton_repository(Path({str(art)!r}), Path({str(tmp_path / 'repo')!r}),
                                TritonOptions(kind="KIND_CPU"), log=lambda m: None)
        assert plan_sources([Path({str(art)!r})], ("labeler",), "fp16", "flag")[0].kind == "labeler"
        try:
            build_engines(Path({str(art)!r}), log=lambda m: None)
        except CdulError as exc:
            print("CdulError:", exc)
        print("torch-free ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "torch-free ok" in r.stdout
    assert (tmp_path / "repo" / "labeler" / "config.pbtxt").is_file()
    if not _has_tensorrt():
        assert "cdul-rt[tensorrt]" in r.stdout
