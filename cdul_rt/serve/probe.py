"""Small helpers to drive a local ``cdul-rt serve`` (the tests and ``bench/serve_load.py``): free loopback ports and
Triton's Prometheus counters."""

from __future__ import annotations

import re
import socket
import urllib.request


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports nobody listens on right now (the OS picks them)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def triton_metric(metrics_port: int, name: str, model: str = "labels", host: str = "127.0.0.1") -> float:
    """A Triton counter (e.g. ``nv_inference_count``, ``nv_inference_exec_count``) summed over ``model``'s
    versions, from the metrics endpoint."""
    text = urllib.request.urlopen(f"http://{host}:{metrics_port}/metrics", timeout=10).read().decode()
    pattern = rf'^{re.escape(name)}{{[^}}]*model="{re.escape(model)}"[^}}]*}} ([0-9.eE+-]+)$'
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))
