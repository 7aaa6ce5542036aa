"""The aggregation of per-crop class scores into pseudo labels, as one value (DESIGN.md 1.1 steps 6-8; eqs. 5-6).

:class:`Aggregation` ``(mode, zeta, lam)`` owns what used to travel as three loose arguments: the four modes of the
paper's Table 3, the checks on the numbers, the math (a numpy reference and its torch twin, which is also traced into
the ONNX labeler graph), the labeler-graph inputs a mode needs, and the keys under which manifests and label-file
metadata record it. Scores have shape ``[k, 1 + N, C]``: k images, crop 0 the global view, crops 1..N the snippets.

Spelling: ``lam`` everywhere in code; ``"lambda"`` only where a file or a graph names it (manifest and label-file
keys, the ONNX input), which must stay as existing files have it.

Pure: numpy at the top, torch imported inside the torch methods (``cdul-rt --help`` imports no torch).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from cdul_rt.errors import CdulError

MODES = ("cdul", "global", "avg", "max")  # cdul first: the default
# the paper's Table 3 lists the baselines first and cdul last; reports and the demo print modes in that order
TABLE3_ORDER = (*(m for m in MODES if m != "cdul"), "cdul")
# paper: zeta in [0, 0.4]. 0.3 keeps a class's best snippet only when it is a confident match under real CLIP's
# scale of 100. The synthetic world's tiny CLIP (scale 13, weak) prefers 0 (BENCHMARKS.md, zeta sweep), where cdul
# becomes `max` of global and snippets; we keep the paper-range default for real CLIPs and document the sweep.
DEFAULT_ZETA = 0.3
DEFAULT_LAM = 1.0  # paper Table 1: lambda = 1 (element-wise max of global and aggregate) is best

# the numeric parameters: field name in code (= the CLI option and keyword name) -> the key that manifests and
# label-file metadata record it under, which is also the labeler graph's float32 [1] input of that name
PARAMS = {"zeta": "zeta", "lam": "lambda"}
GRAPH_PARAMS = tuple(PARAMS.values())  # the labeler's parameter input names, traced in this order after crops, text
OPTIONS = ("mode", *PARAMS)  # the option names (CLI, LabelConfig, ExportOptions, Labeler.open) that make the value
FILE_KEYS = {"mode": "mode", **PARAMS}  # option name -> key in manifests and label-file metadata
# the parameters each mode's labeler graph reads: S_ag (an output in every mode) uses zeta; only cdul mixes with lam.
# The exporter traces every parameter as an input; the ONNX graph keeps the ones its mode uses.
MODE_PARAMS = {"cdul": ("zeta", "lam"), "global": ("zeta",), "avg": ("zeta",), "max": ("zeta",)}


def check_mode(mode: str) -> str:
    if mode not in MODES:
        from cdul_rt.errors import did_you_mean

        raise did_you_mean(mode, MODES, "aggregation mode", f"Modes: {', '.join(MODES)}.")
    return mode


@dataclass(frozen=True)
class Aggregation:
    """How per-crop scores become ``(S_final, S_global, S_ag)``; checked on construction (CLI-worded errors)."""

    mode: str = "cdul"
    zeta: float = DEFAULT_ZETA  # snippet threshold: a class keeps its max snippet score when it reaches zeta
    lam: float = DEFAULT_LAM  # lambda of eq. 6: 1 = element-wise max of global and aggregate, 0 = their mean

    def __post_init__(self) -> None:
        check_mode(self.mode)
        # NaN passes every `<` test, so test for the good range
        if not (math.isfinite(self.zeta) and 0.0 <= self.zeta <= 1.0):
            raise CdulError(f"--zeta must be in [0, 1] (paper: 0-0.4), got {self.zeta}")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise CdulError(f"--lam must be a finite number >= 0 (1 = max, 0 = mean), got {self.lam}")

    @classmethod
    def from_options(cls, options) -> Aggregation:
        """The value of an options object with :data:`OPTIONS` attributes (``LabelConfig``, ``ExportOptions``)."""
        return cls(**{name: getattr(options, name) for name in OPTIONS})

    # -- records -----------------------------------------------------------------------------------------------
    def options(self) -> dict:
        """:data:`OPTIONS` as keyword arguments (``mode``, ``zeta``, ``lam``) of an options object."""
        return {"mode": self.mode, **self.numbers()}

    def numbers(self) -> dict[str, float]:
        """The numeric parameters by field name (``zeta``, ``lam``): keyword arguments of the graph runners."""
        return {name: getattr(self, name) for name in PARAMS}

    def params_dict(self) -> dict[str, float]:
        """The numeric parameters under their file keys (``zeta``, ``lambda``), in that order."""
        return {key: getattr(self, name) for name, key in PARAMS.items()}

    def to_dict(self) -> dict:
        """``{"mode", "zeta", "lambda"}`` as manifests and label-file metadata record them."""
        return {"mode": self.mode, **self.params_dict()}

    @staticmethod
    def recorded_options(record: dict) -> dict:
        """The options a manifest/metadata record holds, by option name (``lam`` for ``"lambda"``); ``None`` for
        the ones it lacks. Unchecked: for filling in options, which are checked where they are used."""
        return {name: record.get(key) for name, key in FILE_KEYS.items()}

    @classmethod
    def from_dict(cls, record: dict) -> Aggregation:
        """The value a manifest's ``labeler`` section or a label file's ``config`` records (extra keys ignored)."""
        missing = [k for k in FILE_KEYS.values() if k not in record]
        if missing:
            raise CdulError(f"the aggregation record lacks {', '.join(missing)} (has {', '.join(sorted(record))}); "
                            "it was not written by cdul-rt: export or label again")
        return cls(**{name: record[key] for name, key in FILE_KEYS.items()})

    def replace(self, **changes) -> Aggregation:
        """A copy with some fields changed (``None`` values are ignored: "not given, keep this one")."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    # -- the labeler graph -------------------------------------------------------------------------------------
    @property
    def graph_inputs(self) -> tuple[str, ...]:
        """Names of the float32 ``[1]`` inputs this mode's exported labeler graph has (after crops, text)."""
        return tuple(PARAMS[name] for name in MODE_PARAMS[self.mode])

    def graph_feeds(self) -> dict[str, np.ndarray]:
        """Every parameter as a float32 ``[1]`` array under its graph input name; a runner feeds the ones its graph
        has (the mode is baked into a graph, so graphs of other modes lack some)."""
        return {key: np.array([value], dtype=np.float32) for key, value in self.params_dict().items()}

    def trace_inputs(self) -> tuple:
        """Example tensors for every parameter input, in :data:`PARAMS` order (names: :data:`GRAPH_PARAMS`), to
        trace the labeler with; they become graph inputs, so the values traced with do not matter."""
        import torch

        return tuple(torch.tensor([float(v)]) for v in self.numbers().values())

    # -- the math ----------------------------------------------------------------------------------------------
    def apply_np(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-crop scores ``[k, 1+N, C]`` -> (S_final, S_global, S_ag), each ``[k, C]`` float32 (eqs. 5-6)."""
        if s.ndim != 3 or s.shape[1] < 2:
            raise CdulError(f"scores must be [images, 1 + snippets, classes], got shape {s.shape}")
        zeta, lam = self.zeta, self.lam
        s_global = s[:, 0]
        local = s[:, 1:]
        alpha, beta = local.max(axis=1), local.min(axis=1)
        s_ag = np.where(alpha >= zeta, alpha, beta)
        if self.mode == "cdul":
            final = 0.5 * (s_global + s_ag + lam * np.abs(s_global - s_ag))
        elif self.mode == "global":
            final = s_global
        elif self.mode == "avg":
            final = s.mean(axis=1)
        else:
            final = s.max(axis=1)
        return final.astype(np.float32), s_global.astype(np.float32), s_ag.astype(np.float32)

    def apply_torch(self, s, *inputs):
        """Torch twin of :meth:`apply_np` (exportable to ONNX: only max/min/where/abs/mean).

        ``inputs``: tensors that replace the numbers, in :data:`PARAMS` order: the labeler graph's parameter
        inputs, so that one export serves every zeta and lambda.
        """
        return _aggregate_torch(s, self.mode, *(inputs or self.numbers().values()))


def _aggregate_torch(s, mode: str, zeta, lam):
    import torch

    s_global = s[:, 0]
    local = s[:, 1:]
    alpha = local.amax(dim=1)
    beta = local.amin(dim=1)
    s_ag = torch.where(alpha >= zeta, alpha, beta)
    if mode == "cdul":
        final = 0.5 * (s_global + s_ag + lam * (s_global - s_ag).abs())
    elif mode == "global":
        final = s_global
    elif mode == "avg":
        final = s.mean(dim=1)
    else:
        final = s.amax(dim=1)
    return final, s_global, s_ag


def aggregate_np(s: np.ndarray, mode: str = "cdul", zeta: float = DEFAULT_ZETA, lam: float = DEFAULT_LAM):
    """``Aggregation(mode, zeta, lam).apply_np(s)``: per-crop scores ``[k, 1+N, C]`` -> (S_final, S_global, S_ag)."""
    return Aggregation(mode, zeta, lam).apply_np(s)


def aggregate_torch(s, mode: str = "cdul", zeta: float = DEFAULT_ZETA, lam: float = DEFAULT_LAM):
    """``Aggregation(mode, zeta, lam).apply_torch(s)``: the torch twin of :func:`aggregate_np`."""
    return Aggregation(mode, zeta, lam).apply_torch(s)
