"""cdul-rt bench: the ratio math on hand-made numbers, --floor, and a tiny end-to-end run with a well-formed JSON."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cdul_rt.bench.floors import Floor, check_floors, default_share, parse_floor
from cdul_rt.bench.report import Row, default_ratio, derive, format_table, rows_json
from cdul_rt.bench.roofline import best_peaks, roofline_fraction, roofline_images_per_s, speedup
from cdul_rt.bench.stats import Throughput, per_item, throughput
from cdul_rt.cli import main
from cdul_rt.errors import CdulError


def test_throughput_median_spread_and_ms():
    t = throughput(10, [2.0, 1.0, 4.0])  # 5, 10, 2.5 images/s
    assert t.median == 5.0
    assert t.spread == pytest.approx((10 - 2.5) / 5)
    assert t.ms_per_image == 200.0
    assert per_item([0.5, 0.25]).samples == (2.0, 4.0)
    with pytest.raises(CdulError):
        Throughput(())


def test_roofline_and_speedup_math():
    # 700 GFLOP/s, 10 crops x 6 GFLOP per image -> at most 11.67 images/s; 7 images/s is 60 % of it
    assert roofline_images_per_s(700e9, 60e9) == pytest.approx(700 / 60)
    assert roofline_fraction(7.0, 700e9, 60e9) == pytest.approx(0.6)
    assert speedup(7.0, 1.4) == pytest.approx(5.0)
    with pytest.raises(CdulError):
        roofline_fraction(1.0, 0.0, 1.0)


def test_roofline_is_the_best_library_per_precision():
    samples = {("torch", "fp32"): [217e9, 210e9, 220e9], ("onnxruntime", "fp32"): [403e9, 390e9, 400e9],
               ("torch", "bf16"): [935e9], ("onnxruntime", "int8"): [1421e9], ("onnxruntime", "fp16"): []}
    peaks = best_peaks(samples)
    assert peaks == {"fp32": (400e9, "onnxruntime"), "bf16": (935e9, "torch"), "int8": (1421e9, "onnxruntime")}
    # the case: onnxruntime fp32 at 160% of torch's fp32 matmul is under 100% of its own library's GEMM
    flops_per_image = 10 * 8.7e9
    ort_fp32 = Row("onnxruntime", "fp32", "e2e", parity=1e-7).measured(Throughput((217e9 * 1.6 / flops_per_image,)))
    derive([ort_fp32], peaks, flops_per_image, tol=1e-2)
    assert ort_fp32.roofline == pytest.approx(217 * 1.6 / 400) and ort_fp32.roofline < 1
    assert ort_fp32.roofline_by == "onnxruntime"


def test_derive_fills_ratios_from_the_naive_row_and_roofline():
    rows = [Row("torch", "bf16", "e2e", parity=0.004, within_margin=False).measured(Throughput((7.0,))),
            Row("torch", "fp32", "encode", parity=0.0, within_margin=True).measured(Throughput((2.0,))),
            Row("onnxruntime", "int8", "e2e", parity=0.03, within_margin=False).measured(Throughput((5.0,))),
            Row("tensorrt", "fp16", "e2e", "cuda", status="no GPU"),
            Row("naive", "fp32", "e2e", parity=0.0).measured(Throughput((1.4,)))]
    derive(rows, {"fp32": (200e9, "torch"), "bf16": (700e9, "torch"), "int8": (1400e9, "onnxruntime")}, 60e9,
           tol=1e-2)
    bf16, fp32, int8, trt, naive = rows
    assert bf16.speedup == pytest.approx(5.0) and bf16.roofline == pytest.approx(0.6) and bf16.parity_ok
    assert fp32.roofline == pytest.approx(2.0 * 60 / 200)
    assert int8.roofline == pytest.approx(5.0 * 60 / 1400) and int8.parity_ok is False  # an int8 GEMM, not bf16
    assert trt.speedup is None and naive.speedup == pytest.approx(1.0)
    table = format_table(rows)
    assert "5.00" in table and "60% torch" in table and "FAIL" in table and "no GPU" in table
    assert "21% onnxruntime" in table and " out " in table and " in " in table
    md = format_table(rows, markdown=True).splitlines()
    assert md[0].startswith("| runtime") and md[1].startswith("|---") and len(md) == 2 + len(rows)


def test_default_share_is_against_the_fastest_row_within_the_margin():
    rows = [Row("torch", "bf16", "e2e", within_margin=False).measured(Throughput((6.85,))),
            Row("onnxruntime", "fp32", "e2e", within_margin=True).measured(Throughput((3.48,))),
            Row("torch", "fp32", "e2e", within_margin=True).measured(Throughput((2.10,))),
            Row("default", "fp32", "e2e", within_margin=True,
                note="label without speed flags: onnxruntime/fp32/cpu").measured(Throughput((3.40,)))]
    default, best = default_ratio(rows)
    assert default.runtime == "default" and (best.runtime, best.precision) == ("onnxruntime", "fp32")
    assert default_ratio(rows[:3]) is None
    as_json = rows_json(rows)
    assert default_share(as_json) == pytest.approx(3.40 / 3.48)  # not 3.40 / 6.85: bf16 is outside the margin
    assert check_floors([parse_floor("default_share=0.75")], as_json) == []
    assert "default_share >= 0.99" in check_floors([parse_floor("default_share=0.99")], as_json)[0]
    assert check_floors([parse_floor("default_share=0.1")], as_json[:3])  # no default row: a failure, not a pass


def _rows():
    return [{"runtime": "torch", "precision": "bf16", "scope": "e2e", "status": "ok", "parity_ok": True,
             "images_per_s": 6.0, "speedup": 4.0, "roofline": 0.5},
            {"runtime": "onnxruntime", "precision": "int8", "scope": "e2e", "status": "ok", "parity_ok": False,
             "images_per_s": 9.0, "speedup": 6.0, "roofline": 0.7},
            {"runtime": "torch", "precision": "bf16", "scope": "encode", "status": "ok", "parity_ok": True,
             "images_per_s": 7.0, "speedup": 4.7, "roofline": 0.58}]


def test_parse_floor():
    assert parse_floor("speedup=3") == Floor("speedup", 3.0)
    assert parse_floor("torch/bf16/e2e:images_per_s=5.5") == Floor("images_per_s", 5.5, "torch/bf16/e2e")
    for bad in ("speedup", "speed=3", "speedup=fast"):
        with pytest.raises(CdulError):
            parse_floor(bad)


def test_floors_pass_and_fail_on_given_numbers():
    rows = _rows()
    # the default target is the fastest end-to-end row that passes parity (int8 fails parity here)
    assert check_floors([parse_floor("speedup=4"), parse_floor("roofline=0.5")], rows) == []
    failed = check_floors([parse_floor("speedup=4.5")], rows)
    assert len(failed) == 1 and "torch/bf16/e2e" in failed[0] and "4.0" in failed[0]
    assert check_floors([parse_floor("torch/bf16/encode:roofline=0.55")], rows) == []
    assert check_floors([parse_floor("torch/bf16/encode:roofline=0.6")], rows)
    assert "no such measured row" in check_floors([parse_floor("tensorrt/fp16/e2e:speedup=1")], rows)[0]


def test_bench_cli_end_to_end_tiny(tmp_path, tiny_config):
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(tiny_config), "--images", "4", "--image-size", "64x48", "--batch-size", "2",
            "--repeats", "1", "--naive-images", "1", "--workers", "0", "--classes", "voc", "--only", "torch/bf16",
            "--work-dir", str(tmp_path / "work"), "--json", str(out), "-q", "--matmul-size", "256", "--no-compile",
            "--floor", "speedup=0.001"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["flops_per_crop"] > 0 and doc["crops_per_image"] == 10
    assert {"fp32", "bf16", "int8"} <= set(doc["roofline"]) and all(v["flops"] > 0 for v in doc["roofline"].values())
    assert doc["roofline"]["int8"]["library"] == "onnxruntime"  # MatMulInteger: the only int8 GEMM measured
    rows = {(row["runtime"], row["precision"], row["scope"]): row for row in doc["rows"]}
    assert {("torch", "fp32", "encode"), ("torch", "fp32", "e2e"), ("torch", "bf16", "e2e"),
            ("naive", "fp32", "e2e")} <= set(rows)
    assert not any(k[0] == "onnxruntime" for k in rows)  # --only
    default = next(row for row in doc["rows"] if row["runtime"] == "default")
    assert default["note"].startswith("label without speed flags (= --runtime auto): onnxruntime/fp32/cpu")
    assert default["parity"] < 1e-4 and default["within_margin"] and default["precision"] == "fp32"
    # roofline fractions come from timings, so only their presence is asserted here (tests never assert wall-clock
    # results); that no row can pass 100% by construction is test_roofline_is_the_best_library_per_precision
    assert all(r["roofline"] is None or r["roofline"] > 0 for r in doc["rows"])
    ref = rows[("torch", "fp32", "e2e")]
    assert ref["parity"] == 0.0 and ref["status"] == "ok" and ref["images_per_s"] > 0
    assert ref["ms_per_image"] == pytest.approx(1000 / ref["images_per_s"])
    naive = rows[("naive", "fp32", "e2e")]
    assert naive["speedup"] == pytest.approx(1.0) and naive["parity"] < 1e-4  # same crops, same model
    assert rows[("torch", "bf16", "e2e")]["parity"] < 5e-2
    assert ref["speedup"] == pytest.approx(ref["images_per_s"] / naive["images_per_s"])
    assert ref["roofline"] > 0
    assert doc["floors"] == [{"spec": "speedup=0.001", "met": True}]
    assert "x naive" in r.output and "roofline" in r.output and "default label (onnxruntime/fp32/cpu)" in r.output
    # the same numbers cannot reach an absurd floor: exit 1, saying which
    args[args.index("torch/bf16")] = "torch/fp32"
    r = CliRunner().invoke(main, args[:-1] + ["speedup=1e9", "--no-auto"])
    assert r.exit_code == 1 and "floor not met" in r.output


def test_bench_rejects_a_bad_floor_before_measuring(tmp_path):
    r = CliRunner().invoke(main, ["bench", "--floor", "sped=3", "--work-dir", str(tmp_path)])
    assert r.exit_code == 2 and "did you mean 'speedup'" in r.output
    assert not (tmp_path / "images-16-640x480").exists()
