"""The PyTorch runtime: the reference implementation every other runtime is checked against."""

from cdul_rt.engines.torch.loader import open_labeler  # noqa: F401
