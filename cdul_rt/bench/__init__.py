"""``cdul-rt bench``: end-to-end and encoder-only throughput of every runtime and precision on this machine.

Pure math (statistics, roofline, floors) lives in small torch-free modules; :mod:`cdul_rt.bench.harness` runs the
measurements and :mod:`cdul_rt.bench.peers` holds the baseline a researcher would write with open_clip.
"""
