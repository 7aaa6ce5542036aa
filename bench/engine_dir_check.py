"""A self-describing artifact folder against torch: `label --runtime onnxruntime --engine-dir DIR` with no model
options, in a process where `import torch` fails, against `label --runtime torch` with the options the folder was
exported with (grid 2, zeta 0.3, lambda 0.5; tiny random CLIP, 24 generated images). Prints the max differences.

    PYTHONPATH=. python bench/engine_dir_check.py
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


def main() -> None:
    from conftest import BLOCK_TORCH, TINY_CLIP_CONFIG, make_images

    from cdul_rt.export.clip import ExportOptions, export_clip
    from cdul_rt.labelfile import read_label_file

    tmp = Path(tempfile.mkdtemp())
    try:
        config = tmp / "tiny-test-clip.json"
        config.write_text(json.dumps(TINY_CLIP_CONFIG))
        images = tmp / "images"
        make_images(images, 24, seed=3)
        export_clip(ExportOptions(out=tmp / "art", model=str(config), pretrained="none", classes="voc", grid=2,
                                  zeta=0.3, lam=0.5), log=lambda m: None)
        common = ["--classes", "voc", "--save-parts", "-q", "-j", "0"]
        folder_run = ["label", str(images), "--runtime", "onnxruntime", "--engine-dir", str(tmp / "art"),
                      "--out", str(tmp / "ort.npz"), *common]
        (tmp / "run.py").write_text(BLOCK_TORCH.format(args=folder_run))
        subprocess.run([sys.executable, str(tmp / "run.py")], check=True)
        subprocess.run([sys.executable, "-m", "cdul_rt", "label", str(images), "--runtime", "torch", "--model",
                        str(config), "--pretrained", "none", "--grid", "2", "--zeta", "0.3", "--lam", "0.5", "--out",
                        str(tmp / "torch.npz"), *common], check=True)
        a, b = read_label_file(tmp / "torch.npz"), read_label_file(tmp / "ort.npz")
        assert a.paths == b.paths
        print(f"images {len(a.paths)}, classes {len(a.classes)}; torch S_final from {a.scores.min():.4f} to "
              f"{a.scores.max():.4f}")
        print(f"max |S_final diff| = {np.abs(a.scores - b.scores).max():.3g}")
        for part in ("global", "aggregate"):
            print(f"max |{part} diff| = {np.abs(a.parts[part] - b.parts[part]).max():.3g}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
