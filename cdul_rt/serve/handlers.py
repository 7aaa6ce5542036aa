"""What ``cdul-rt serve`` does with a merged batch of requests: pure Python on a :class:`cdul_rt.Labeler`.

Triton's dynamic batcher hands the model several clients' requests at once. Each request is one or more encoded
image files (a BYTES tensor ``[n, 1]``). Every image is decoded and cropped on its own (a thread pool: PIL releases
the GIL), the crops of every readable image of every request go through **one** encoder call, and the scores are
split back per request. An image that cannot be read (corrupt, empty, truncated, not an image, over
``--max-pixels``, a decompression bomb, a request over ``--max-request-bytes``) gets its reason in the ``error``
output and NaN scores; the other images, in its request and in the requests merged with it, are scored as if it
were not there. (PyTriton 0.7 fails *every* request of a batch when the inference function raises, so a per-image
failure must travel in an output; the inference function raises only for faults of the server itself.)

Nothing here imports PyTriton: the same functions run in the server and in the tests.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from cdul_rt.engines.base import EMBEDDING_OUTPUT, LABELER_OUTPUTS

ERROR_OUTPUT = "error"
LABELS_OUTPUT = "labels"
EMBEDDING = "embedding"
Request = dict[str, np.ndarray]


def request_too_large(size: int, limit: int) -> str:
    """The reason a request over ``--max-request-bytes`` is refused (server and client word it alike)."""
    return f"request of {size} bytes exceeds the server's {limit}-byte limit (--max-request-bytes)"


def _column(request: Request, name: str) -> list[Any]:
    """A request's BYTES input ``[n, 1]`` (or ``[n]``) as a list of ``n`` Python objects."""
    arr = np.asarray(request[name], dtype=object)
    return list(arr.reshape(arr.shape[0], -1)[:, 0]) if arr.ndim else [arr.item()]


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else bytes(value)


def _bytes_col(strings: list[str]) -> np.ndarray:
    return np.array([[s.encode("utf-8")] for s in strings], dtype=object).reshape(len(strings), 1)


class RequestHandlers:
    """The served models' inference functions over one open labeler.

    Args:
        labeler: an open :class:`cdul_rt.Labeler` (its options are the server's).
        max_request_bytes: a request whose images add up to more is refused (each of its images gets the error).
        workers: decode threads.
    """

    def __init__(self, labeler: Any, max_request_bytes: int, workers: int = 2) -> None:
        self.labeler = labeler
        self.max_request_bytes = max_request_bytes
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="cdul-decode")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # -- shared: decode every image of every request, each on its own --------------------------------------------
    def _decode_all(self, requests: list[Request], decode: Callable[[bytes], np.ndarray]):
        """Per request: the list of (array or None, error or "") per image, decoded in the thread pool."""
        from cdul_rt.api.inputs import reason

        def one(data: bytes):
            try:
                return decode(data), ""
            except Exception as exc:  # noqa: BLE001 - any decoder failure is this image's error
                return None, reason(exc)

        jobs = []
        for request in requests:
            images = [_as_bytes(v) for v in _column(request, "image")]
            size = sum(len(b) for b in images)
            if size > self.max_request_bytes:
                why = request_too_large(size, self.max_request_bytes)
                jobs.append([_Done((None, why)) for _ in images])
            else:
                jobs.append([self._pool.submit(one, b) for b in images])
        return [[job.result() for job in per_request] for per_request in jobs]

    @staticmethod
    def _split(decoded: list[list[tuple]], rows: dict[str, np.ndarray], widths: dict[str, int]):
        """Scatter the merged call's rows back into per-request arrays (NaN rows for unreadable images)."""
        out, r = [], 0
        for per_request in decoded:
            n = len(per_request)
            arrays = {k: np.full((n, w), np.nan, np.float32) for k, w in widths.items()}
            for i, (value, _) in enumerate(per_request):
                if value is not None:
                    for k in widths:
                        arrays[k][i] = rows[k][r]
                    r += 1
            out.append(arrays)
        return out

    # -- the served models ------------------------------------------------------------------------------------------
    def labels(self, requests: list[Request]) -> list[Request]:
        """``labels``: image files -> S_final, S_global, S_ag ``[n, C]``, embedding ``[n, D]``, labels (JSON list
        per image), error (empty string per readable image)."""
        from cdul_rt.labelfile import select_labels

        lab = self.labeler
        decoded = self._decode_all(requests, lab.crops)
        good = [crops for per_request in decoded for crops, _ in per_request if crops is not None]
        c, d = len(lab.classes), lab.embed_dim
        widths = {**{k: c for k in LABELER_OUTPUTS}, EMBEDDING: d}
        rows: dict[str, np.ndarray] = {}
        if good:
            scored = lab.score_crops(np.concatenate(good))
            rows = {k: scored[k] for k in LABELER_OUTPUTS}
            rows[EMBEDDING] = scored.get(EMBEDDING_OUTPUT, np.full((len(good), d), np.nan, np.float32))
        cfg = lab.options
        responses = []
        for per_request, arrays in zip(decoded, self._split(decoded, rows, widths)):
            labels = [json.dumps([] if err else select_labels(arrays["S_final"][i], lab.classes, cfg.threshold,
                                                              cfg.top_k))
                      for i, (_, err) in enumerate(per_request)]
            responses.append({**arrays, LABELS_OUTPUT: _bytes_col(labels),
                              ERROR_OUTPUT: _bytes_col([err for _, err in per_request])})
        return responses

    def image_embedding(self, requests: list[Request]) -> list[Request]:
        """``image_embedding``: image files -> the L2-normalised global-view embedding ``[n, D]`` + error."""
        lab = self.labeler
        if not lab.has_visual_encoder:  # TensorRT folders: the labeler graph's embeddings
            return [{EMBEDDING: r[EMBEDDING], ERROR_OUTPUT: r[ERROR_OUTPUT]} for r in self.labels(requests)]
        decoded = self._decode_all(requests, lab.global_view)
        good = [v for per_request in decoded for v, _ in per_request if v is not None]
        rows = {EMBEDDING: lab.embed_views(np.stack(good))} if good else {}
        return [{**arrays, ERROR_OUTPUT: _bytes_col([err for _, err in per_request])}
                for per_request, arrays in zip(decoded, self._split(decoded, rows, {EMBEDDING: lab.embed_dim}))]

    def text_embedding(self, requests: list[Request]) -> list[Request]:
        """``text_embedding``: UTF-8 strings -> L2-normalised text embeddings ``[n, D]`` (no template applied)
        + error (text that is not UTF-8)."""
        per_request = []
        for request in requests:
            items = []
            for value in _column(request, "text"):
                try:
                    items.append((_as_bytes(value).decode("utf-8"), ""))
                except UnicodeDecodeError as exc:
                    items.append((None, f"text is not UTF-8: {exc}"))
            per_request.append(items)
        texts = [t for items in per_request for t, _ in items if t is not None]
        rows = {EMBEDDING: self.labeler.embed_texts(texts)} if texts else {}
        return [{**arrays, ERROR_OUTPUT: _bytes_col([err for _, err in items])}
                for items, arrays in zip(per_request, self._split(per_request, rows,
                                                                   {EMBEDDING: self.labeler.embed_dim}))]

    def metadata(self, requests: list[Request], info: dict) -> list[Request]:
        """``metadata``: any request -> the server's model metadata as one JSON string."""
        blob = json.dumps(info)
        return [{"json": _bytes_col([blob] * max(1, len(_column(r, "request"))))} for r in requests]


class _Done:
    """A finished 'future' (a refused request's images are never decoded)."""

    def __init__(self, value: tuple) -> None:
        self._value = value

    def result(self) -> tuple:
        return self._value
