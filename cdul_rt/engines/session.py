"""What every runtime hands the labeling pipeline: a runner plus the facts the pipeline needs about the model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cdul_rt.engines.base import BaseRunner
from cdul_rt.preprocess import PreprocessConfig


@dataclass
class LabelerSession:
    runner: BaseRunner  # a fused-labeler runner (crops + text_embeddings -> S_final, S_global, S_ag)
    text_embeddings: np.ndarray  # float32 [C, D], L2-normalised
    preprocess: PreprocessConfig
    model: str  # display name, e.g. "ViT-B-32.openai"
    weights_hash: str
    precision: str
    runtime: str
