"""What `cdul-rt serve` does with a merged batch (cdul_rt/serve/handlers.py), without a server: every readable image
gets the scores the Python API gives it alone, every unreadable one its own reason, and the bad ones never change
the good ones' numbers. (The same through a real Triton server: tests/test_serve.py.)"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdul_rt import Labeler
from cdul_rt.serve.handlers import RequestHandlers

from conftest import make_broken, make_images

OPTS = {"classes": "voc", "grid": 2, "pretrained": "none", "batch_size": 3}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve-handlers") / "images"
    make_images(root, 5, seed=11)
    make_broken(root)
    return root


@pytest.fixture(scope="module")
def handlers(tiny_config):
    with Labeler.open(str(tiny_config), **OPTS, max_pixels=200 * 200) as lab:
        h = RequestHandlers(lab, max_request_bytes=20_000, workers=2)
        yield h
        h.close()


def _request(*blobs: bytes) -> dict:
    return {"image": np.array([[b] for b in blobs], dtype=object).reshape(len(blobs), 1)}


def _png(h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_a_merged_batch_scores_each_good_image_as_alone_and_fails_each_bad_one_alone(folder, handlers):
    good = sorted(p for p in folder.rglob("img_*"))
    bad = {name: (folder / name).read_bytes() for name in make_broken(folder)}
    noisy = np.random.default_rng(0).integers(0, 256, 25_000, dtype=np.uint8).tobytes()  # > max_request_bytes
    requests = [_request(good[0].read_bytes()), _request(bad["broken_text.jpg"]),
                _request(good[1].read_bytes(), bad["broken_truncated.jpg"], good[2].read_bytes()),
                _request(bad["broken_empty.png"]), _request(_png(210, 200)), _request(noisy), _request(good[3].read_bytes()),
                _request(_png(300, 300))]  # 42 000 px > max_pixels 40 000; 90 000 px > 2x: PIL's bomb guard
    out = handlers.labels(requests)
    assert len(out) == len(requests)
    errors = [[e.decode() for e in r["error"].reshape(-1)] for r in out]
    assert errors[0] == [""] and errors[6] == [""]
    assert errors[1][0] == "not an image (or an unsupported format)"
    assert errors[2][0] == "" and errors[2][2] == "" and "truncated" in errors[2][1]
    assert errors[3][0].startswith("empty")
    assert errors[4][0].startswith("decompression bomb") and "40000" in errors[4][0]  # --max-pixels, as label
    assert "--max-request-bytes" in errors[5][0]
    assert errors[7][0].startswith("decompression bomb")
    assert all(len(r["S_final"]) == len(r["error"]) for r in out)

    alone = handlers.labeler.label([good[0], good[1], good[2], good[3]])
    got = np.stack([out[0]["S_final"][0], out[2]["S_final"][0], out[2]["S_final"][2], out[6]["S_final"][0]])
    spread = float(alone.scores.max() - alone.scores.min())
    assert np.abs(got - alone.scores).max() <= 1e-5 * max(spread, 1e-3)
    got_emb = np.stack([out[0]["embedding"][0], out[2]["embedding"][0]])
    assert np.abs(got_emb - alone.embeddings[:2]).max() < 1e-5
    assert np.isnan(out[2]["S_final"][1]).all() and np.isnan(out[1]["S_global"]).all()
    assert json.loads(out[0]["labels"][0, 0]) == alone.labels[0]
    assert json.loads(out[1]["labels"][0, 0]) == []


def test_all_bad_batch_answers_without_calling_the_encoder(folder, handlers):
    out = handlers.labels([_request(b""), _request(b"xx")])
    assert [r["error"][0, 0].decode() != "" for r in out] == [True, True]
    assert out[0]["S_final"].shape == (1, len(handlers.labeler.classes))


def test_image_and_text_embeddings_merged(folder, handlers):
    good = sorted(p for p in folder.rglob("img_*"))[:2]
    out = handlers.image_embedding([_request(good[0].read_bytes(), b"junk"), _request(good[1].read_bytes())])
    want = handlers.labeler.embed_images(good)
    assert np.abs(np.stack([out[0]["embedding"][0], out[1]["embedding"][0]]) - want).max() < 1e-5
    assert out[0]["error"][1, 0].decode() == "not an image (or an unsupported format)"

    texts = [{"text": np.array([[b"a photo of a dog"], [b"\xff\xfe"]], dtype=object)},
             {"text": np.array([["a cat".encode()]], dtype=object)}]
    out = handlers.text_embedding(texts)
    want = handlers.labeler.embed_texts(["a photo of a dog", "a cat"])
    assert np.abs(out[0]["embedding"][0] - want[0]).max() < 1e-5 and np.abs(out[1]["embedding"][0] - want[1]).max() < 1e-5
    assert "UTF-8" in out[0]["error"][1, 0].decode() and np.isnan(out[0]["embedding"][1]).all()
