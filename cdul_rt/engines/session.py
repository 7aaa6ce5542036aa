"""What every runtime hands the labeling pipeline: a runner plus the facts the pipeline needs about the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cdul_rt.engines.base import BaseRunner
from cdul_rt.preprocess import PreprocessConfig


@dataclass
class LabelerSession:
    runner: BaseRunner  # a fused-labeler runner (crops + text_embeddings -> S_final, S_global, S_ag, image_embeddings)
    text_embeddings: np.ndarray  # float32 [C, D], L2-normalised
    preprocess: PreprocessConfig
    model: str  # display name, e.g. "ViT-B-32.openai"
    weights_hash: str
    precision: str
    runtime: str
    # prompts -> float32 [n, D] L2-normalised (the runtime's text encoder); None where it has none
    encode_texts: Callable[[list[str]], np.ndarray] | None = None
    # normalised crops float32 [n, 3, S, S] -> float32 [n, D] L2-normalised, the visual encoder alone; None: the
    # labeler runner's image_embeddings are used instead (one labeler call per image)
    encode_images: Callable[[np.ndarray], np.ndarray] | None = None
