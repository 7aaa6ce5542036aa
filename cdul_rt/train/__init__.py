"""Gradient-alignment training (CDUL section 3.2): losses, psi, the trainer, checkpoints.

Import submodules directly (``cdul_rt.train.losses`` ...); torch is imported inside functions so that importing
this package stays light.
"""
