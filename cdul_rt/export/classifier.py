"""Export a trained classifier (a ``cdul-rt train`` run) to ``classifier.onnx`` (fp32) and ``classifier.fp16.onnx``.

Graph contract: ``images`` [batch, 3, S, S] (float32, or float16 in the fp16 graph), the whole image resized to S
and ImageNet-normalised (the manifest says how) -> ``probs`` float32 [batch, C] (sigmoid computed in fp32 in both
graphs, so fp16 only affects the backbone). Batch is dynamic. Exporter: the TorchScript-based one
(``dynamo=False``), chosen explicitly because torch >= 2.9 defaults to dynamo.

Beside the graphs: ``classifier.manifest.json`` (classes, preprocessing, files, hashes, parity table) and the same
facts in each graph's ``metadata_props``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cdul_rt import __version__
from cdul_rt.errors import CdulError, require
from cdul_rt.fileio import sha256_file
from cdul_rt.train.engines import MANIFEST, ClassifierInfo, OnnxClassifierRunner

FILES = {"fp32": "classifier.onnx", "fp16": "classifier.fp16.onnx"}
# max |probability difference| against the torch fp32 model; fp16 keeps ~3 decimal digits through ~100 layers
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}
OPSET = 17


def _wrapper(model, half: bool):
    import torch

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model.half() if half else model

        def forward(self, images):
            return torch.sigmoid(self.net(images).float())

    return Classifier().eval()


def _load_model(run_dir: Path):
    from cdul_rt.train.checkpoint import load_model_file
    from cdul_rt.train.model import build_classifier

    payload = load_model_file(run_dir)
    meta = payload["meta"]
    model = build_classifier(meta["arch"], len(meta["classes"]), "none")
    model.load_state_dict(payload["state_dict"])
    return model.eval(), meta


def _export_one(model, meta: dict, precision: str, path: Path, opset: int) -> None:
    import torch

    wrapper = _wrapper(model, precision == "fp16")
    dtype = torch.float16 if precision == "fp16" else torch.float32
    s = int(meta["image_size"])
    example = torch.zeros(2, 3, s, s, dtype=dtype)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is chosen on purpose
        torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["probs"],
                          dynamic_axes={"images": {0: "batch"}, "probs": {0: "batch"}})
    _set_metadata(path, meta, precision)


def _model_facts(meta: dict) -> dict[str, Any]:
    keys = ("arch", "classes", "image_size", "mean", "std", "resize", "epoch")
    return {k: meta[k] for k in keys if k in meta}


def _set_metadata(path: Path, meta: dict, precision: str) -> None:
    onnx = require("onnx", "onnx")
    graph = onnx.load(str(path))
    props = {"cdul_rt.kind": "classifier", "cdul_rt.version": __version__, "cdul_rt.precision": precision,
             **{f"cdul_rt.{k}": json.dumps(v) for k, v in _model_facts(meta).items()}}
    onnx.helper.set_model_props(graph, props)
    onnx.save(graph, str(path))


def _verify_inputs(meta: dict, images: Sequence[Path] | None, count: int = 5) -> np.ndarray:
    """Real images when given (the deployment's pixels), else seeded normal noise in the normalised range."""
    s = int(meta["image_size"])
    if images:
        from cdul_rt.imageio import discover_images, open_rgb
        from cdul_rt.train.data import preprocess

        files = [f for p in images for f in discover_images(p)][:count]  # files or folders
        if len(files) < 2:
            raise CdulError("--verify-images: give at least 2 images (batch 1 and a larger batch are checked)")
        return np.stack([preprocess(open_rgb(p), s, meta["mean"], meta["std"]) for p in files])
    return np.random.default_rng(0).standard_normal((count, 3, s, s)).astype(np.float32)


def verify(model, folder: Path, meta: dict, precisions: Sequence[str], inputs: np.ndarray) -> list[dict[str, Any]]:
    """Each graph under onnxruntime against the torch fp32 model, at batch 1 and batch N (dynamic batch)."""
    import torch

    with torch.no_grad():
        reference = torch.sigmoid(model.float()(torch.from_numpy(inputs))).numpy()
    info = ClassifierInfo.from_meta(meta, str(folder))
    rows = []
    for precision in precisions:
        with OnnxClassifierRunner(folder / FILES[precision], info) as runner:
            got = np.concatenate([runner.infer({"images": inputs[:1]})["probs"],
                                  runner.infer({"images": inputs[1:]})["probs"]])
        diff = np.abs(got - reference)
        cosine = float(np.sum(got * reference) / (np.linalg.norm(got) * np.linalg.norm(reference) + 1e-12))
        rows.append({"graph": FILES[precision], "precision": precision, "runtime": "onnxruntime-cpu",
                     "max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "cosine": cosine,
                     "tolerance": TOLERANCE[precision], "ok": bool(diff.max() <= TOLERANCE[precision])})
    return rows


def format_parity_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'graph':<24} {'precision':<9} {'max_abs':>10} {'mean_abs':>10} {'cosine':>10}  result"]
    for r in rows:
        lines.append(f"{r['graph']:<24} {r['precision']:<9} {r['max_abs']:>10.2e} {r['mean_abs']:>10.2e} "
                     f"{r['cosine']:>10.6f}  {'ok' if r['ok'] else 'FAIL (tolerance %.0e)' % r['tolerance']}")
    return "\n".join(lines)


def export_classifier(run_dir: Path, out_dir: Path, precisions: Sequence[str] = ("fp32", "fp16"),
                      opset: int = OPSET, check: bool = True, images: Sequence[Path] | None = None) -> dict:
    """Export, write the manifest, and (``check``) verify parity; a failed check raises after writing the table."""
    import torch

    unknown = [p for p in precisions if p not in FILES]
    if unknown or not precisions:
        raise CdulError(f"classifier precisions are {', '.join(FILES)}; got {', '.join(precisions) or 'none'}")
    require("onnx", "onnx")
    model, meta = _load_model(Path(run_dir))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for precision in precisions:
        _export_one(_load_model(Path(run_dir))[0] if precision == "fp16" else model, meta, precision,
                    out_dir / FILES[precision], opset)
    s = int(meta["image_size"])
    manifest: dict[str, Any] = {
        "kind": "classifier", "cdul_rt_version": __version__, "torch_version": torch.__version__,
        "exporter": "torch.onnx (TorchScript, dynamo=False)", "opset": opset, "run": str(run_dir),
        "model": _model_facts(meta),
        "files": {p: FILES[p] for p in precisions},
        "sha256": {p: sha256_file(out_dir / FILES[p]) for p in precisions},
        "inputs": [{"name": "images", "shape": ["batch", 3, s, s],
                    "dtype": {p: "float16" if p == "fp16" else "float32" for p in precisions}}],
        "outputs": [{"name": "probs", "shape": ["batch", len(meta["classes"])], "dtype": "float32"}],
    }
    if check:
        manifest["verify"] = verify(model, out_dir, meta, precisions, _verify_inputs(meta, images))
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    failed = [r for r in manifest.get("verify", []) if not r["ok"]]
    if failed:
        raise CdulError("classifier parity check failed:\n" + format_parity_table(manifest["verify"]))
    return manifest
