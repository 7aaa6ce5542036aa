"""The :class:`~cdul_rt.aggregation.Aggregation` value: checks, records, the labeler-graph inputs of each mode, and
the numpy/torch twins behind one value (the hand-computed math is in test_labeling.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from cdul_rt.aggregation import MODES, TABLE3_ORDER, Aggregation, aggregate_np
from cdul_rt.errors import CdulError


def _scores(seed: int = 0, k: int = 3, crops: int = 10, classes: int = 7) -> np.ndarray:
    s = np.random.default_rng(seed).random((k, crops, classes)).astype(np.float32)
    return s / s.sum(-1, keepdims=True)


@pytest.mark.parametrize("kwargs,message", [
    ({"mode": "cdl"}, "did you mean 'cdul'"), ({"zeta": 1.5}, r"--zeta must be in \[0, 1\]"),
    ({"zeta": -0.1}, "--zeta must be in"), ({"zeta": math.nan}, "--zeta must be in"),
    ({"lam": -1.0}, "--lam must be a finite number >= 0"), ({"lam": math.inf}, "--lam must be a finite number"),
    ({"lam": math.nan}, "--lam must be a finite number"),
])
def test_bad_values_are_refused_with_the_cli_message(kwargs, message):
    with pytest.raises(CdulError, match=message):
        Aggregation(**kwargs)


def test_defaults_and_edges_are_accepted():
    assert Aggregation() == Aggregation("cdul", 0.3, 1.0)
    for edge in (Aggregation(zeta=0.0), Aggregation(zeta=1.0), Aggregation(lam=0.0), Aggregation(lam=7.0)):
        assert edge.mode == "cdul"


def test_the_value_is_frozen_and_replace_keeps_unset_fields():
    agg = Aggregation("max", 0.2, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        agg.zeta = 0.4  # type: ignore[misc]
    assert agg.replace(zeta=None, lam=0.25) == Aggregation("max", 0.2, 0.25)
    with pytest.raises(CdulError, match="--zeta"):
        agg.replace(zeta=2.0)  # a copy is checked like any value


def test_records_keep_the_file_keys():
    """Manifests and label-file metadata spell lambda "lambda"; the code spells it ``lam``."""
    agg = Aggregation("avg", 0.15, 0.5)
    assert agg.to_dict() == {"mode": "avg", "zeta": 0.15, "lambda": 0.5}
    assert list(agg.to_dict()) == ["mode", "zeta", "lambda"]  # the order files are written in
    assert agg.params_dict() == {"zeta": 0.15, "lambda": 0.5} and agg.numbers() == {"zeta": 0.15, "lam": 0.5}
    labeler = {"grid": 2, "crops_per_image": 5, **agg.to_dict(), "inputs": [], "outputs": []}  # a manifest section
    assert Aggregation.from_dict(labeler) == agg
    with pytest.raises(CdulError, match="lacks lambda"):
        Aggregation.from_dict({"mode": "cdul", "zeta": 0.3})


@pytest.mark.parametrize("mode", MODES)
def test_graph_feeds_cover_the_graph_inputs(mode):
    agg = Aggregation(mode, 0.25, 0.75)
    assert agg.graph_inputs == (("zeta", "lambda") if mode == "cdul" else ("zeta",))
    feeds = agg.graph_feeds()
    assert set(agg.graph_inputs) <= set(feeds)
    for name, want in (("zeta", 0.25), ("lambda", 0.75)):
        assert feeds[name].dtype == np.float32 and feeds[name].shape == (1,) and feeds[name][0] == want


@pytest.mark.parametrize("mode", MODES)
def test_exported_graph_has_exactly_the_inputs_the_mode_needs(tmp_path, mode):
    """The labeler traced with every parameter as an input keeps the ones its mode reads (what the manifest and
    the runtimes are told by ``graph_inputs``)."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    from cdul_rt.export.clip import LABELER_OUTPUTS, _trace
    from cdul_rt.export.graphs import build_labeler

    torch.manual_seed(0)
    model = torch.nn.Module()
    model.visual = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 8))
    agg = Aggregation(mode)
    crops, text = torch.randn(2 * 5, 3, 4, 4), torch.randn(3, 8)
    path = tmp_path / "labeler.onnx"
    _trace(build_labeler(model, math.log(100.0), 2, mode), (crops, text, *agg.trace_inputs()), path,
           ["crops", "text_embeddings", "zeta", "lambda"], LABELER_OUTPUTS, {"crops": {0: "crops"}}, 17)
    names = [i.name for i in onnx.load(str(path)).graph.input]
    assert names == ["crops", "text_embeddings", *agg.graph_inputs]


@pytest.mark.parametrize("mode", MODES)
def test_numpy_and_torch_twins_agree_with_numbers_or_graph_inputs(mode):
    torch = pytest.importorskip("torch")
    s = _scores(1)
    agg = Aggregation(mode, 0.12, 0.6)
    want = agg.apply_np(s)
    as_numbers = agg.apply_torch(torch.from_numpy(s))
    as_inputs = Aggregation(mode).apply_torch(torch.from_numpy(s), torch.tensor([0.12]), torch.tensor([0.6]))
    spread = float(s.max() - s.min())
    for a, b, c in zip(want, as_numbers, as_inputs):
        np.testing.assert_allclose(b.numpy(), a, atol=1e-6 * spread)
        np.testing.assert_array_equal(c.numpy(), b.numpy())


def test_the_numbers_change_the_result():
    s = _scores(2)
    base = Aggregation("cdul", 0.3, 1.0).apply_np(s)
    assert not np.array_equal(Aggregation("cdul", 0.3, 0.0).apply_np(s)[0], base[0])  # lam reaches S_final
    assert not np.array_equal(Aggregation("cdul", 0.0, 1.0).apply_np(s)[2], base[2])  # zeta reaches S_ag
    np.testing.assert_array_equal(aggregate_np(s, "cdul", 0.3, 1.0)[0], base[0])  # the function is the value


def test_table3_order_is_the_papers_and_holds_every_mode():
    assert TABLE3_ORDER == ("global", "avg", "max", "cdul")
    assert sorted(TABLE3_ORDER) == sorted(MODES) and MODES[0] == "cdul"  # cdul stays the default and first choice


def test_the_module_is_torch_free():
    import subprocess
    import sys

    code = "import sys, cdul_rt.aggregation as a; a.Aggregation().apply_np(__import__('numpy').ones((1, 2, 3)));" \
           "print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_option_objects_carry_the_value(tmp_path):
    from cdul_rt.export.clip import ExportOptions
    from cdul_rt.pipeline import LabelConfig

    cfg = LabelConfig(input=tmp_path, out=tmp_path / "o.jsonl", mode="max", zeta=0.2, lam=0.5, runtime="torch",
                      precision="fp32")
    assert cfg.aggregation == Aggregation("max", 0.2, 0.5)
    assert ExportOptions(out=tmp_path, model="m", **cfg.aggregation.options()).aggregation == cfg.aggregation
    with pytest.raises(CdulError, match="--zeta must be in"):  # export refuses what label would refuse later
        ExportOptions(out=tmp_path, model="m", zeta=1.5).validate()


def test_recorded_options_name_lambda_lam():
    record = {"grid": 3, "mode": "avg", "zeta": 0.1, "lambda": 0.9}
    assert Aggregation.recorded_options(record) == {"mode": "avg", "zeta": 0.1, "lam": 0.9}
    assert Aggregation.recorded_options({"mode": "cdul"}) == {"mode": "cdul", "zeta": None, "lam": None}


@pytest.mark.parametrize("command_name", ["label", "export", "serve"])
def test_cli_options_are_the_values_fields(command_name):
    import importlib

    import click

    command = importlib.import_module(f"cdul_rt.cli.{command_name}").command
    ctx = click.Context(command)
    params = {p.name: p for p in command.params}
    for name, value in Aggregation().options().items():
        default = params[name].get_default(ctx)
        assert default == (None if command_name == "serve" else value), (name, default)
    assert list(params["mode"].type.choices) == list(MODES)


# -- mutation survivors (issue 19 item 4) ---------------------------------------------------------------------------
def test_one_snippet_or_one_class_is_enough_and_fewer_crops_are_refused():
    # grid 1 gives two crops (global + one tile); a one-class vocabulary gives C = 1
    for shape in [(2, 2, 5), (2, 3, 1)]:
        s = _scores(1, k=shape[0], crops=shape[1], classes=shape[2])
        final, s_global, s_ag = Aggregation("cdul", 0.0, 1.0).apply_np(s)
        np.testing.assert_array_equal(s_global, s[:, 0])
        np.testing.assert_allclose(final, np.maximum(s[:, 0], s[:, 1:].max(axis=1)), rtol=1e-6)
    with pytest.raises(CdulError) as e:
        Aggregation().apply_np(np.zeros((2, 1, 5), np.float32))
    assert str(e.value) == "scores must be [images, 1 + snippets, classes], got shape (2, 1, 5)"


@pytest.mark.parametrize("mode", MODES)
def test_every_part_comes_back_as_float32(mode):
    parts = Aggregation(mode).apply_np(_scores(2).astype(np.float64))
    assert [p.dtype for p in parts] == [np.float32] * 3


def test_the_helpers_default_to_cdul():
    import torch

    s = _scores(3)
    for got, want in zip(aggregate_np(s), Aggregation().apply_np(s)):
        np.testing.assert_array_equal(got, want)
    from cdul_rt.aggregation import aggregate_torch

    for got, want in zip(aggregate_torch(torch.from_numpy(s)), Aggregation().apply_np(s)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_the_mode_and_record_errors_name_the_choices():
    with pytest.raises(CdulError) as e:
        Aggregation("cdl")
    assert str(e.value) == "unknown aggregation mode 'cdl'; did you mean 'cdul'? Modes: cdul, global, avg, max."
    with pytest.raises(CdulError) as e:
        Aggregation.from_dict({"mode": "max", "x": 1})
    assert str(e.value) == ("the aggregation record lacks zeta, lambda (has mode, x); it was not written by cdul-rt: "
                            "export or label again")


@pytest.mark.parametrize("mode", MODES)
def test_the_torch_twin_reads_every_snippet_and_keeps_a_max_equal_to_zeta(mode):
    import torch

    # [1 image, global + 3 snippets, 4 classes]; float32-exact values. Class 0: the max is snippet 1 and equals
    # zeta (kept); class 1: every snippet below zeta, the min is snippet 1; class 2: max in snippet 1 above zeta;
    # class 3: below zeta, min in snippet 3.
    s = np.array([[[0.5, 0.5, 0.125, 0.25],
                   [0.25, 0.0625, 0.75, 0.125],
                   [0.125, 0.125, 0.5, 0.0625],
                   [0.0625, 0.1875, 0.25, 0.03125]]], dtype=np.float32)
    agg = Aggregation(mode, zeta=0.25, lam=0.5)
    _, _, s_ag = agg.apply_np(s)
    np.testing.assert_array_equal(s_ag[0], [0.25, 0.0625, 0.75, 0.03125])
    for got, want in zip(agg.apply_torch(torch.from_numpy(s)), agg.apply_np(s)):
        np.testing.assert_array_equal(got.numpy(), want)
