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

Schema (``schema_version`` 1), one typed section per key (JSON key order = field order, so a manifest written
from these types is byte-identical to one written from the dicts of earlier versions):

- ``model`` (:class:`ModelInfo`): ``arch`` (open_clip name or config stem), ``pretrained`` (tag, ``none`` or
  ``file``), ``display``, ``weights_hash`` (sha256 of the checkpoint or ``random-seed0``), ``config`` (the open_clip
  model config), ``logit_scale`` (the raw learned parameter; scores use its exp), ``embed_dim``, ``image_size``,
  ``request`` (the ``--model`` / ``--pretrained`` strings given at export).
- ``preprocess``: :class:`~cdul_rt.preprocess.PreprocessConfig` as a dict (:meth:`Manifest.preprocess_config`).
- ``tokenizer`` (:class:`TokenizerInfo`): ``kind`` (``clip-bpe`` or ``none`` when new vocabularies cannot be
  tokenised torch-free), ``context_length``, ``vocab_file`` (relative path), ``sot_id``, ``eot_id``.
- ``vocabulary`` (:class:`VocabularyInfo`): ``name``, ``classes``, ``prompts``, ``template``, ``embeddings``
  (relative ``.npy`` path): the vocabulary exported with the graphs.
- ``labeler`` (:class:`LabelerInfo`): ``grid``, ``crops_per_image``, ``mode`` (baked into the graph), ``zeta`` and
  ``lambda`` (the export defaults; both are graph inputs) — together an :class:`~cdul_rt.aggregation.Aggregation` —,
  ``inputs`` and ``outputs`` (names).
- ``precision``: ``fp32``, ``fp16`` (fp16 weights/activations, LayerNorm/softmax/reductions fp32, fp32 I/O) or
  ``int8`` (dynamic quantisation of MatMul weights, for CPU); ``opset``; ``exporter``; ``versions`` (library
  versions at export); ``created``.
- ``files``: ``{relative path: FileEntry}`` (``sha256``, ``bytes``, ``role``, ``precision``) for every graph and
  data file.

The same metadata (minus ``files``) is written into each ONNX file's ``metadata_props`` under ``cdul_rt.*`` keys.
Sections are also readable by their JSON keys (``manifest.labeler["grid"]``) for callers written against the
schema-1 dicts; cdul-rt's own code uses the attributes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from cdul_rt.aggregation import Aggregation
from cdul_rt.errors import CdulError
from cdul_rt.fileio import atomic_write, sha256_file

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GRAPHS = ("visual.onnx", "text.onnx", "labeler.onnx")
PRECISIONS = ("fp32", "fp16", "int8")
FORMAT = "cdul-rt-artifacts"


class _Section:
    """A typed manifest section: built from and written as its JSON object (keys missing from a hand-made or
    older manifest take the field's default); also readable by JSON key, read-only."""

    JSON_NAMES: ClassVar[dict[str, str]] = {}  # field name -> JSON key, where the key is not a Python name

    @classmethod
    def from_dict(cls, data: Any):
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise CdulError(f"manifest section {cls.__name__} must be a JSON object, got {type(data).__name__}; "
                            "re-export the folder")
        by_key = {cls.JSON_NAMES.get(f.name, f.name): f.name for f in fields(cls)}
        return cls(**{by_key[k]: v for k, v in data.items() if k in by_key})

    def to_dict(self) -> dict:
        return {self.JSON_NAMES.get(f.name, f.name): _plain(getattr(self, f.name)) for f in fields(self)}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.to_dict()

    def keys(self) -> list[str]:  # with __getitem__: ``{**section}`` gives the JSON object
        return list(self.to_dict())


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, _Section) else value


@dataclass(frozen=True)
class ExportRequest(_Section):
    """The ``--model`` / ``--pretrained`` strings given at export (a folder answers to them as well)."""

    model: str | None = None
    pretrained: str | None = None


@dataclass(frozen=True)
class ModelInfo(_Section):
    arch: str = ""
    pretrained: str | None = None
    display: str = ""
    weights_hash: str = ""
    config: dict | None = None
    logit_scale: float = 0.0
    embed_dim: int = 0
    image_size: int = 0
    request: ExportRequest = field(default_factory=ExportRequest)

    def __post_init__(self) -> None:
        object.__setattr__(self, "request", ExportRequest.from_dict(self.request or {}))


@dataclass(frozen=True)
class TokenizerInfo(_Section):
    kind: str = "none"  # clip-bpe: tokenised torch-free with vocab_file
    context_length: int | None = None
    vocab_file: str | None = None
    sot_id: int | None = None
    eot_id: int | None = None


@dataclass(frozen=True)
class VocabularyInfo(_Section):
    name: str | None = None
    classes: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    template: str | None = None
    embeddings: str | None = None  # relative .npy path


@dataclass(frozen=True)
class LabelerInfo(_Section):
    """The fused labeler graph. Its aggregation is written flat (``mode``, ``zeta``, ``lambda``): the mode is baked
    into the graph, zeta and lambda are the export defaults of its graph inputs."""

    grid: int = 3
    crops_per_image: int = 10
    aggregation: Aggregation = field(default_factory=Aggregation)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Any) -> "LabelerInfo":
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise CdulError(f"manifest section labeler must be a JSON object, got {type(data).__name__}; re-export "
                            "the folder")
        rest = {k: v for k, v in data.items() if k in ("grid", "crops_per_image", "inputs", "outputs")}
        return cls(aggregation=Aggregation.from_dict(data), **rest)

    def to_dict(self) -> dict:
        return {"grid": self.grid, "crops_per_image": self.crops_per_image, **self.aggregation.to_dict(),
                "inputs": self.inputs, "outputs": self.outputs}


@dataclass(frozen=True)
class FileEntry(_Section):
    JSON_NAMES: ClassVar[dict[str, str]] = {"size": "bytes"}

    sha256: str
    size: int
    role: str
    precision: str


_SECTIONS = {"model": ModelInfo, "tokenizer": TokenizerInfo, "vocabulary": VocabularyInfo, "labeler": LabelerInfo}


@dataclass
class Manifest:
    model: ModelInfo
    preprocess: dict  # PreprocessConfig.to_dict(); typed by preprocess_config()
    tokenizer: TokenizerInfo
    vocabulary: VocabularyInfo
    labeler: LabelerInfo
    precision: str
    opset: int
    exporter: str
    versions: dict  # package -> version at export (None: not installed)
    created: str
    files: dict[str, FileEntry] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    format: str = FORMAT

    def __setattr__(self, name: str, value: Any) -> None:
        """Sections are typed whichever way they are set (built from JSON, or a dict assigned later)."""
        if name in _SECTIONS:
            value = _SECTIONS[name].from_dict(value)
        elif name == "files":
            value = {rel: FileEntry.from_dict(entry) for rel, entry in (value or {}).items()}
        super().__setattr__(name, value)

    # -- (de)serialisation ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        out["files"] = {rel: entry.to_dict() for rel, entry in self.files.items()}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

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
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(data) - {"files"})
        if missing:
            raise CdulError(f"{source} lacks {', '.join(missing)}; re-export the folder")
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:  # a file entry without one of its keys
            raise CdulError(f"{source} is damaged ({exc}); re-export the folder") from exc

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST
        atomic_write(path, self.to_json())
        return path

    # -- derived facts ---------------------------------------------------------------------------------------------
    @property
    def crops_per_image(self) -> int:
        return int(self.labeler.crops_per_image)

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    @property
    def weights_hash(self) -> str:
        return self.model.weights_hash

    def preprocess_config(self):
        """The folder's :class:`~cdul_rt.preprocess.PreprocessConfig`."""
        from cdul_rt.preprocess import PreprocessConfig

        return PreprocessConfig.from_dict(self.preprocess)

    def graph_precision(self, rel: str) -> str:
        """The precision of one listed file (a folder may hold graphs of several precisions)."""
        return self.files[rel].precision

    def metadata_props(self) -> dict[str, str]:
        """What goes into each ONNX file's ``metadata_props`` (strings only, JSON for structures)."""
        meta = {k: v for k, v in self.to_dict().items() if k != "files"}
        return {f"cdul_rt.{k}": v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()}

    def add_file(self, folder: Path, rel: str, role: str, precision: str | None = None) -> None:
        path = Path(folder) / rel
        self.files[rel] = FileEntry(sha256_file(path), path.stat().st_size, role, precision or self.precision)


def read_manifest(folder: str | Path) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise CdulError(f"artifact folder {folder} does not exist; create it with `cdul-rt export --out {folder}`")
    if not path.is_file():
        raise CdulError(f"{folder} has no {MANIFEST}: not a cdul-rt artifact folder (or an interrupted export); "
                        f"re-export with `cdul-rt export --out {folder}`")
    return Manifest.from_json(path.read_text(encoding="utf-8"), str(path))


def check_file(folder: Path, rel: str, entry: FileEntry) -> None:
    """Size first (a truncated copy is named as such), then sha256."""
    path = Path(folder) / rel
    if not path.is_file():
        raise CdulError(f"{path} is missing from the artifact folder; re-export it with `cdul-rt export`")
    size = path.stat().st_size
    if size != entry.size:
        what = "truncated" if size < entry.size else "larger than exported"
        raise CdulError(f"{path} is {what} ({size} bytes, manifest says {entry.size}); copy it again or "
                        "re-export the folder")
    if sha256_file(path) != entry.sha256:
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
