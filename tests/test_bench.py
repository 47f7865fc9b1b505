"""archfit.cli.bench: arms side by side, ratios, failing peers reported, and `archfit bench`."""
import json
import subprocess
import sys

import pytest

from archfit.cli import bench


def _result(name, precision, ms):
    return bench.ArmResult(name, precision, build_seconds=1.0, samples_ms=list(ms))


def test_table_ratios_to_eager_best_peer_and_matmul_peak():
    results = [_result("eager PyTorch", "fp32", [10, 10, 12]), _result("OpenVINO direct", "fp32", [4, 4, 5]),
               _result("eager PyTorch bf16 autocast", "bf16", [8, 8, 8]), _result("archfit openvino fp32", "fp32", [5, 5, 5]),
               _result("archfit openvino bf16", "bf16", [2, 2, 2]), bench.ArmResult("broken peer", "fp32", error="X: no")]
    rows = {r["arm"]: r for r in bench.table(results, flops=2e9, peaks={"fp32": 1000.0, "bf16": 2000.0})}
    a = rows["archfit openvino fp32"]
    assert a["p50_ms"] == 5 and a["vs_eager"] == pytest.approx(2.0) and a["vs_best_peer"] == pytest.approx(0.8)
    assert a["gflops"] == pytest.approx(400.0) and a["share_of_peak"] == pytest.approx(0.4)
    b = rows["archfit openvino bf16"]
    assert b["vs_best_peer"] == pytest.approx(4.0) and b["share_of_peak"] == pytest.approx(0.5)  # vs bf16 peers only
    assert rows["broken peer"]["error"] == "X: no"
    text = bench.render(list(rows.values()))
    assert "| archfit openvino fp32 | fp32 | 5.00 | 5.00 | 2.00x | 0.80x | 400 | 40% | 1.0 |" in text
    assert "| broken peer | fp32 | failed: X: no |" in text


def test_run_arms_interleaves_and_reports_a_peer_that_fails():
    order = []

    def arm(name):
        return lambda: (lambda: order.append(name))

    def broken():
        raise RuntimeError("cannot convert this model\nlong trace")

    results = bench.run_arms({"a": ("fp32", arm("a")), "b": ("fp32", arm("b")), "c": ("fp32", broken)},
                             rounds=2, seconds_per_round=0.0)
    assert [r.name for r in results] == ["a", "b", "c"]
    assert results[2].error == "RuntimeError: cannot convert this model" and not results[2].samples_ms
    assert len(results[0].samples_ms) == 6  # 3 calls per round at the least, 2 rounds
    # interleaved: the build's first call of each arm, then each round a burst per arm (an untimed
    # call, then 3 timed), the second round starting with b
    assert order[2:] == ["a"] * 4 + ["b"] * 4 + ["b"] * 4 + ["a"] * 4


def test_cli_bench_compares_chosen_arms_on_a_tiny_model():
    # a process of its own: the peers (torch.compile with OpenVINO's backend) change torch's global state
    cmd = [sys.executable, "-m", "archfit", "bench", "resnet18", "--tiny", "--arm", "OpenVINO direct",
           "--arm", "archfit openvino fp32", "--rounds", "1", "--seconds", "0.1", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    rows = {r["arm"]: r for r in data["rows"]}
    # bf16 peers only where the CPU has bf16 units (elsewhere OpenVINO would quietly time fp32)
    bf16 = {"OpenVINO direct bf16"} if bench.bf16_units() else set()
    assert set(rows) == {"eager PyTorch", "OpenVINO direct", "archfit openvino fp32"} | bf16
    for r in rows.values():
        assert r["error"] is None and r["p50_ms"] > 0 and r["p90_ms"] >= r["p50_ms"] and r["vs_eager"] > 0
    assert rows["eager PyTorch"]["vs_eager"] == pytest.approx(1.0)
    assert data["gflop"] > 0 and data["matmul_peak_gflops"]["fp32"] > 0


def test_table_pairs_an_arm_with_the_best_peer_round_by_round():
    # the host slows down in round 2: archfit is 10% ahead within each round, but its samples fall
    # mostly in the slow round, so the ratio of overall p50s says it is behind
    peer = bench.ArmResult("OpenVINO direct", "fp32", samples_ms=[11, 11, 11, 22], rounds_ms=[11, 22])
    arm = bench.ArmResult("archfit openvino fp32", "fp32", samples_ms=[10, 20, 20, 20], rounds_ms=[10, 20])
    rows = {r["arm"]: r for r in bench.table([peer, arm], flops=1e9, peaks={"fp32": 1000.0})}
    assert rows["archfit openvino fp32"]["vs_best_peer"] < 1.0
    assert rows["archfit openvino fp32"]["paired_vs_best_peer"] == pytest.approx(1.1)
    assert rows["OpenVINO direct"]["paired_vs_best_peer"] == pytest.approx(1.0)


def test_run_arms_keeps_each_rounds_median():
    ticks = iter(range(1000))
    results = bench.run_arms({"a": ("fp32", lambda: (lambda: next(ticks)))}, rounds=3, seconds_per_round=0.0)
    assert len(results[0].rounds_ms) == 3 and len(results[0].samples_ms) == 9
