"""How many actors, and how many CPUs for the decode stage, from what a Ray cluster offers (pure, Ray-free).

The rule that matters on small machines: the actor pool must leave at least one whole CPU to the decode stage. Ray
Data schedules the decode tasks with the CPUs the actors do not hold; if the actors hold every CPU, decode tasks
never run, the actors never get input, and the job never finishes (measured on a 2-CPU machine with two 1-CPU
actors). So a plan that would starve the decode stage is refused with the largest actor count that fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cdul_rt.errors import CdulError


@dataclass(frozen=True)
class RayPlan:
    """Resources of the two stages: ``actors`` engines of ``cpus_per_actor``/``gpus_per_actor`` each, and up to
    ``decode_tasks`` concurrent 1-CPU decode tasks."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    decode_tasks: int

    def describe(self) -> str:
        gpu = f", {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        return (f"{self.actors} actor(s) x ({self.cpus_per_actor:g} CPU{gpu}), "
                f"up to {self.decode_tasks} decode task(s) x 1 CPU")


def _default_actors(cpus: float, gpus: float, cpus_per_actor: float, gpus_per_actor: float) -> int:
    if gpus_per_actor > 0:
        # one engine per GPU share; the rest of the CPUs decode (on GPUs, decoding is the usual bottleneck)
        by_gpu = int(gpus // gpus_per_actor)
        by_cpu = int((cpus - 1) // cpus_per_actor)
        return max(1, min(by_gpu, by_cpu))
    # CPU inference: a quarter of the CPUs (at least one) decode, the rest run engines
    reserve = max(1, math.ceil(cpus / 4))
    return max(1, int((cpus - reserve) // cpus_per_actor))


def plan_resources(cluster: dict[str, float], actors: int | None = None, cpus_per_actor: float | None = None,
                   gpus_per_actor: float | None = None, want_gpu: bool = False) -> RayPlan:
    """Size the job from ``ray.cluster_resources()``-style totals (``{"CPU": n, "GPU": m, ...}``).

    ``None`` knobs get defaults: 1 CPU per actor; 1 GPU per actor when ``want_gpu`` (the engine runs on CUDA), else
    none; as many actors as GPUs, or three quarters of the CPUs on CPU-only clusters. Explicit values are checked,
    never rewritten.
    """
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if cpus < 2:
        raise CdulError(f"the Ray cluster has {cpus:g} CPU(s); labeling needs at least 2 (one for an engine actor, "
                        "one for decoding). Start Ray with more CPUs (ray start --num-cpus N)")
    cpa = 1.0 if cpus_per_actor is None else float(cpus_per_actor)
    gpa = (1.0 if want_gpu else 0.0) if gpus_per_actor is None else float(gpus_per_actor)
    if cpa <= 0:
        raise CdulError(f"--cpus-per-actor must be > 0, got {cpa:g}")
    if gpa < 0:
        raise CdulError(f"--gpus-per-actor must be >= 0, got {gpa:g}")
    if want_gpu and gpa == 0:
        raise CdulError("--device cuda with --gpus-per-actor 0: the actors would get no GPU; "
                        "use --gpus-per-actor 1 (or a fraction) or --device cpu")
    if gpa > 0 and not want_gpu:
        raise CdulError(f"--gpus-per-actor {gpa:g} with --device cpu would hold GPUs the engine does not use; "
                        "add --device cuda or drop --gpus-per-actor")
    if gpa > 0 and gpus < gpa:
        raise CdulError(f"the Ray cluster has {gpus:g} GPU(s), fewer than --gpus-per-actor {gpa:g}; "
                        "use --device cpu or connect to a cluster with GPUs (--ray-address)")
    n = _default_actors(cpus, gpus, cpa, gpa) if actors is None else int(actors)
    if n < 1:
        raise CdulError(f"--actors must be >= 1, got {n}")
    fit = int((cpus - 1) // cpa)
    if n * cpa > cpus - 1:
        fix = f"--actors {fit} or fewer" if fit >= 1 else f"--cpus-per-actor {cpus - 1:g} or fewer"
        raise CdulError(
            f"{n} actor(s) x {cpa:g} CPU leave less than one of the cluster's {cpus:g} CPUs for the decode stage, "
            f"so the job would stall (decode tasks never scheduled); use {fix}")
    if gpa > 0 and n * gpa > gpus:
        raise CdulError(f"{n} actor(s) x {gpa:g} GPU need more than the cluster's {gpus:g} GPUs; "
                        f"use --actors {int(gpus // gpa)} or fewer")
    return RayPlan(n, cpa, gpa, max(1, int(cpus - n * cpa)))


def plan_report(plan: RayPlan, nodes: list[dict]) -> str:
    """The plan as printed before a job: the stages, then each live node's CPUs and GPUs (``ray.nodes()`` entries).

    With GPUs it says that there is one engine per GPU and how many CPUs that leaves to decoding, since on GPU nodes
    decoding is the usual bottleneck.
    """
    live = [n for n in nodes if n.get("Alive", n.get("alive", True))]
    cpus = sum(float(n.get("Resources", {}).get("CPU", 0)) for n in live)
    gpus = sum(float(n.get("Resources", {}).get("GPU", 0)) for n in live)
    text = plan.describe()
    if plan.gpus_per_actor:
        per = "one actor per GPU" if plan.gpus_per_actor == 1 else f"{1 / plan.gpus_per_actor:g} actors per GPU"
        text += (f"; {per} ({plan.actors} actor(s) on {plan.actors * plan.gpus_per_actor:g} of {gpus:g} GPU(s)), "
                 f"{cpus - plan.actors * plan.cpus_per_actor:g} of {cpus:g} CPU(s) left to decoding")
    else:
        text += f"; {cpus - plan.actors * plan.cpus_per_actor:g} of {cpus:g} CPU(s) left to decoding"
    parts = []
    for n in live:
        res = n.get("Resources", {})
        gpu = f", {float(res['GPU']):g} GPU" if res.get("GPU") else ""
        parts.append(f"{str(n.get('NodeID', '?'))[:12]} ({n.get('NodeManagerAddress', '?')}): "
                     f"{float(res.get('CPU', 0)):g} CPU{gpu}")
    return text + f"; {len(live)} node(s): " + "; ".join(parts)
