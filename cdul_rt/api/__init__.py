"""The public Python API: :class:`Labeler`, :class:`Classifier` and :func:`prepare_crops`.

Importable from the package root (``from cdul_rt import Labeler``) without importing torch: the torch runtime is
imported when a labeler or classifier that needs it is opened.
"""

from cdul_rt.api.classifier import Classifier
from cdul_rt.api.inputs import ImageInput, prepare_crops
from cdul_rt.api.labeler import Labeler
from cdul_rt.api.results import LabelResult, Prediction

__all__ = ["Classifier", "ImageInput", "LabelResult", "Labeler", "Prediction", "prepare_crops"]
