"""The Python API's numbers for issue 21 (tiny random CLIP, grid 2, 6 generated images, CPU):

- ``Labeler`` (torch) vs the visual encoder called directly (``encode_image``): min cosine of ``label()``'s
  embeddings and of ``embed_images``;
- ``Labeler.open(engine_dir=...)`` in a process where ``import torch`` fails: S_final vs the torch runtime, and its
  embeddings (``labeler.onnx``'s output and ``visual.onnx`` via ``embed_images``) vs ``encode_image``.

    PYTHONPATH=. python bench/api_parity.py

(API vs CLI is exact by construction and asserted in tests/test_api.py::test_api_scores_equal_the_label_file_exactly.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

TORCH_FREE = """
import sys; sys.modules['torch'] = None
import numpy as np
from cdul_rt import Labeler
with Labeler.open(engine_dir={folder!r}, classes='voc') as lab:
    r = lab.label({images!r}); e = lab.embed_images({images!r})
np.savez({out!r}, s=r.scores, le=r.embeddings, e=e)
assert sys.modules.get('torch') is None
"""


def main() -> None:
    import torch

    from cdul_rt import Labeler
    from cdul_rt.export.clip import ExportOptions, export_clip
    from cdul_rt.preprocess import normalize_batch
    from conftest import TINY_CLIP_CONFIG, make_images

    tmp = Path(tempfile.mkdtemp(prefix="api-parity-"))
    try:
        cfg = tmp / "tiny.json"
        cfg.write_text(json.dumps(TINY_CLIP_CONFIG))
        images = [str(p) for p in make_images(tmp / "images", 6, seed=9)]
        export_clip(ExportOptions(out=tmp / "art", model=str(cfg), pretrained="none", classes="voc", grid=2),
                    log=lambda m: None)
        with Labeler.open(str(cfg), pretrained="none", classes="voc", grid=2) as lab:
            res, emb = lab.label(images), lab.embed_images(images)
            views = normalize_batch(np.stack([lab.crops(p)[0] for p in images]), lab._session.preprocess)
            with torch.no_grad():
                ref = lab._session.runner.bundle.model.encode_image(torch.from_numpy(views), normalize=True).numpy()
        cos = lambda a: float((a * ref).sum(1).min())  # noqa: E731
        print(f"torch: label() embeddings vs encode_image, min cosine      {cos(res.embeddings):.7f}")
        print(f"torch: embed_images vs encode_image, min cosine            {cos(emb):.7f}")
        code = TORCH_FREE.format(folder=str(tmp / "art"), images=images, out=str(tmp / "o.npz"))
        subprocess.run([sys.executable, "-c", code], check=True)
        o = np.load(tmp / "o.npz")
        print(f"onnxruntime, torch blocked: S_final max abs diff vs torch  {np.abs(o['s'] - res.scores).max():.2e}")
        print(f"onnxruntime: labeler.onnx embeddings, min cosine           {cos(o['le']):.7f}")
        print(f"onnxruntime: embed_images (visual.onnx), min cosine        {cos(o['e']):.7f}")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
