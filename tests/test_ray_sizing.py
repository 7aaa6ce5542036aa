"""Sizing of Ray labeling jobs from the cluster's resources (pure; runs without Ray installed)."""

from __future__ import annotations

import pytest

from cdul_rt.distributed.sizing import plan_resources
from cdul_rt.errors import CdulError


def test_two_cpus_get_one_actor_and_one_decode_cpu():
    plan = plan_resources({"CPU": 2.0})
    assert (plan.actors, plan.cpus_per_actor, plan.gpus_per_actor, plan.decode_tasks) == (1, 1.0, 0.0, 1)


def test_two_one_cpu_actors_on_two_cpus_are_refused_with_the_count_that_fits():
    # the measured deadlock: both CPUs held by actors, decode tasks never scheduled
    with pytest.raises(CdulError, match="--actors 1 or fewer"):
        plan_resources({"CPU": 2.0}, actors=2)
    with pytest.raises(CdulError, match="--cpus-per-actor 1 or fewer"):
        plan_resources({"CPU": 2.0}, cpus_per_actor=2)


def test_cpu_cluster_keeps_a_quarter_for_decoding():
    plan = plan_resources({"CPU": 16.0})
    assert plan.actors == 12 and plan.decode_tasks == 4
    plan = plan_resources({"CPU": 16.0}, cpus_per_actor=4)
    assert plan.actors == 3 and plan.decode_tasks == 4


def test_gpu_cluster_gets_one_actor_per_gpu_and_the_rest_decodes():
    plan = plan_resources({"CPU": 32.0, "GPU": 4.0}, want_gpu=True)
    assert (plan.actors, plan.gpus_per_actor, plan.decode_tasks) == (4, 1.0, 28)
    plan = plan_resources({"CPU": 32.0, "GPU": 4.0}, gpus_per_actor=0.5, want_gpu=True)
    assert plan.actors == 8 and plan.decode_tasks == 24
    # CPUs bound the actor count too: every actor needs its CPU and one must remain for decoding
    assert plan_resources({"CPU": 3.0, "GPU": 8.0}, want_gpu=True).actors == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"cluster": {"CPU": 8.0}, "want_gpu": True}, "fewer than --gpus-per-actor"),
    ({"cluster": {"CPU": 8.0, "GPU": 1.0}, "gpus_per_actor": 1.0}, "--device cpu"),
    ({"cluster": {"CPU": 8.0, "GPU": 1.0}, "gpus_per_actor": 0.0, "want_gpu": True}, "no GPU"),
    ({"cluster": {"CPU": 8.0, "GPU": 2.0}, "actors": 3, "want_gpu": True}, "--actors 2 or fewer"),
    ({"cluster": {"CPU": 1.0}}, "at least 2"),
    ({"cluster": {"CPU": 8.0}, "actors": 0}, "--actors must be >= 1"),
    ({"cluster": {"CPU": 8.0}, "cpus_per_actor": 0}, "--cpus-per-actor must be > 0"),
])
def test_impossible_plans_say_what_to_change(kwargs, message):
    cluster = kwargs.pop("cluster")
    with pytest.raises(CdulError, match=message):
        plan_resources(cluster, **kwargs)


def test_plan_report_names_every_node_and_what_is_left_to_decoding():
    from cdul_rt.distributed.sizing import plan_report

    nodes = [{"Alive": True, "NodeID": "a" * 40, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 8.0}},
             {"Alive": True, "NodeID": "b" * 40, "NodeManagerAddress": "10.0.0.2",
              "Resources": {"CPU": 8.0, "GPU": 2.0}},
             {"Alive": False, "NodeID": "c" * 40, "NodeManagerAddress": "10.0.0.3", "Resources": {"CPU": 64.0}}]
    plan = plan_resources({"CPU": 16.0, "GPU": 2.0}, want_gpu=True)
    text = plan_report(plan, nodes)
    assert text.startswith("2 actor(s) x (1 CPU, 1 GPU), up to 14 decode task(s)")
    assert "one actor per GPU (2 actor(s) on 2 of 2 GPU(s)), 14 of 16 CPU(s) left to decoding" in text
    assert "2 node(s): aaaaaaaaaaaa (10.0.0.1): 8 CPU; bbbbbbbbbbbb (10.0.0.2): 8 CPU, 2 GPU" in text
    half = plan_report(plan_resources({"CPU": 16.0, "GPU": 2.0}, gpus_per_actor=0.5, want_gpu=True), nodes)
    assert "2 actors per GPU (4 actor(s) on 2 of 2 GPU(s))" in half
    assert "12 actor(s) x (1 CPU), up to 4 decode task(s)" in plan_report(plan_resources({"CPU": 16.0}), nodes)
