"""Scale-out labeling on an existing distributed engine (Ray Data); Ray is the optional extra ``cdul-rt[ray]``.

Modules: ``sizing`` (pure: actors and CPU stages from the cluster's resources), ``sources`` (image paths, local or
fsspec URLs, and decoding them into crops), ``shards`` (atomic Parquet shards, resume, reading a job's output) and
``ray_label`` (the Ray Data pipeline behind ``cdul-rt label --cluster ray``). Only ``ray_label`` imports Ray.
"""
