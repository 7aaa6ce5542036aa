"""cdul-rt: annotation-free multi-label labeling with CLIP (CDUL, ICCV 2023), training and fast engines."""

__version__ = "0.1.0"
