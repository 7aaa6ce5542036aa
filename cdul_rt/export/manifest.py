"""The artifact folder and its ``manifest.json``: the contract between the exporter and every runtime.

An artifact folder written by ``cdul-rt export`` holds::

    manifest.json              this schema (below); runtimes read nothing else to learn about the model
    visual.onnx                crops float32 [n, 3, S, S] -> image_embeddings float32 [n, D] (L2-normalised)
    text.onnx                  tokens int32 [b, L] -> text_embeddings float32 [b, D] (L2-normalised)
    labeler.onnx               crops float32 [k*(1+g^2), 3, S, S], text_embeddings float32 [C, D],
                               zeta float32 [1], lambda float32 [1]  (present only where the mode uses them)
                               -> S_final, S_global, S_ag float32 [k, C], image_embeddings float32 [k, D]
                               (L2-normalised global view of each image; absent in folders exported before it)
    tokenizer/bpe_simple_vocab_16e6.txt.gz   CLIP BPE merges, for torch-free tokenisation of new vocabularies
    text_embeddings/<key>.npy  class embeddings float32 [C, D] of one (vocabulary, template), with <key>.json

Schema (``schema_version`` 1), all keys always present unless marked optional:

- ``model``: ``arch`` (open_clip name or config stem), ``pretrained`` (tag, ``none`` or ``file``), ``display``,
  ``weights_hash`` (sha256 of the checkpoint or ``random-seed0``), ``config`` (the open_clip model config),
  ``logit_scale`` (the raw learned parameter; scores use its exp), ``embed_dim``, ``image_size``,
  ``request`` (the ``--model`` / ``--pretrained`` strings given at export).
- ``preprocess``: :class:`~cdul_rt.preprocess.PreprocessConfig` as a dict.
- ``tokenizer``: ``kind`` (``clip-bpe`` or ``none`` when new vocabularies cannot be tokenised torch-free),
  ``context_length``, ``vocab_file`` (relative path), ``sot_id``, ``eot_id``.
- ``vocabulary``: ``name``, ``classes``, ``prompts``, ``template``, ``embeddings`` (relative ``.npy`` path): the
  vocabulary exported with the graphs.
- ``labeler``: ``grid``, ``crops_per_image``, ``mode`` (baked into the graph), ``zeta`` and ``lambda`` (the export
  defaults; both are graph inputs), ``inputs`` and ``outputs`` (names).
- ``precision``: ``fp32``, ``fp16`` (fp16 weights/activations, LayerNorm/softmax/reductions fp32, fp32 I/O) or
  ``int8`` (dynamic quantisation of MatMul weights, for CPU); ``opset``; ``exporter``; ``versions`` (library
  versions at export); ``created``.
- ``files``: ``{relative path: {"sha256", "bytes", "role", "precision"}}`` for every graph and data file.

The same metadata (minus ``files``) is written into each ONNX file's ``metadata_props`` under ``cdul_rt.*`` keys.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cdul_rt.errors import CdulError
from cdul_rt.fileio import atomic_write, sha256_file

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GRAPHS = ("visual.onnx", "text.onnx", "labeler.onnx")
PRECISIONS = ("fp32", "fp16", "int8")
FORMAT = "cdul-rt-artifacts"


@dataclass
class Manifest:
    model: dict
    preprocess: dict
    tokenizer: dict
    vocabulary: dict
    labeler: dict
    precision: str
    opset: int
    exporter: str
    versions: dict
    created: str
    files: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    format: str = FORMAT

    # -- (de)serialisation ----------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str, source: str = "manifest") -> "Manifest":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise CdulError(f"{source} is not valid JSON ({exc}); the artifact folder is damaged: "
                            "re-export it") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CdulError(f"{source} is not a cdul-rt artifact manifest; re-export with `cdul-rt export`")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise CdulError(f"{source} has schema version {data.get('schema_version')}, this cdul-rt reads "
                            f"{SCHEMA_VERSION}; re-export with this version of cdul-rt")
        names = set(cls.__dataclass_fields__)
        missing = sorted(names - set(data) - {"files"})
        if missing:
            raise CdulError(f"{source} lacks {', '.join(missing)}; re-export the folder")
        return cls(**{k: v for k, v in data.items() if k in names})

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST
        atomic_write(path, self.to_json())
        return path

    # -- derived facts ---------------------------------------------------------------------------------------------
    @property
    def crops_per_image(self) -> int:
        return int(self.labeler["crops_per_image"])

    @property
    def embed_dim(self) -> int:
        return int(self.model["embed_dim"])

    @property
    def image_size(self) -> int:
        return int(self.model["image_size"])

    def metadata_props(self) -> dict[str, str]:
        """What goes into each ONNX file's ``metadata_props`` (strings only, JSON for structures)."""
        meta = {k: v for k, v in asdict(self).items() if k != "files"}
        return {f"cdul_rt.{k}": v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()}

    def add_file(self, folder: Path, rel: str, role: str, precision: str | None = None) -> None:
        path = Path(folder) / rel
        self.files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "role": role,
                           "precision": precision or self.precision}


def read_manifest(folder: str | Path) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise CdulError(f"artifact folder {folder} does not exist; create it with `cdul-rt export --out {folder}`")
    if not path.is_file():
        raise CdulError(f"{folder} has no {MANIFEST}: not a cdul-rt artifact folder (or an interrupted export); "
                        f"re-export with `cdul-rt export --out {folder}`")
    return Manifest.from_json(path.read_text(encoding="utf-8"), str(path))


def check_file(folder: Path, rel: str, entry: dict) -> None:
    """Size first (a truncated copy is named as such), then sha256."""
    path = Path(folder) / rel
    if not path.is_file():
        raise CdulError(f"{path} is missing from the artifact folder; re-export it with `cdul-rt export`")
    size = path.stat().st_size
    if size != entry["bytes"]:
        what = "truncated" if size < entry["bytes"] else "larger than exported"
        raise CdulError(f"{path} is {what} ({size} bytes, manifest says {entry['bytes']}); copy it again or "
                        "re-export the folder")
    if sha256_file(path) != entry["sha256"]:
        raise CdulError(f"{path} does not match its sha256 in {MANIFEST} (modified or corrupted); re-export the "
                        "folder or copy it again")


def verify_artifacts(folder: str | Path, files: tuple[str, ...] | None = None) -> Manifest:
    """Read the manifest and check every listed file (or only ``files``) for presence, size and sha256."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.precision not in PRECISIONS:
        raise CdulError(f"{folder}: unknown precision {manifest.precision!r} in {MANIFEST}; re-export the folder")
    wanted = files if files is not None else tuple(manifest.files)
    for rel in wanted:
        if rel not in manifest.files:
            raise CdulError(f"{folder}/{MANIFEST} does not list {rel}; re-export the folder")
        check_file(folder, rel, manifest.files[rel])
    return manifest
