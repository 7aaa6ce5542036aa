"""``cdul-rt serve`` (a Triton Inference Server through PyTriton) and its client, ``cdul-rt label --server``."""
