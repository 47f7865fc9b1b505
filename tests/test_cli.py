"""The command line, end to end through a subprocess."""
import json
import os
import subprocess
import sys

import pytest


def run(*args, timeout=300):
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "archfit", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_analyze_json_lists_fallback_with_source():
    r = run("analyze", "mlp-custom-op", "--tiny", "--json", "-t", "openvino", "-t", "onnxruntime")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [rep["target"] for rep in data["reports"]] == ["openvino", "onnxruntime"]
    fallback = data["reports"][0]["fallback"][0]
    assert fallback["op"] == "archfit_zoo.softclip" and "toy.py" in fallback["sources"][0]


def test_compile_prints_report_and_comparison_with_eager():
    r = run("compile", "bert-base", "--tiny", "--target", "onnxruntime")
    assert r.returncode == 0, r.stderr
    assert "verdict: FITS" in r.stdout
    assert "compiled vs eager PyTorch (PASS" in r.stdout
    assert "latency (median, batch as given): eager PyTorch" in r.stdout


@pytest.mark.parametrize("args, message", [
    (("analyze", "no-such-model"), "error: model: no built-in model named 'no-such-model'"),
    (("compile", "mlp-custom-op", "--tiny", "--require-full"), "error: partition: require_full=True"),
    (("compile", "resnet18", "--tiny", "-t", "tpu"), "error: target: unknown target 'tpu'"),
])
def test_errors_exit_nonzero_with_one_line(args, message):
    r = run(*args)
    assert r.returncode == 1
    assert r.stderr.startswith(message)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_targets_lists_shipped_backends():
    r = run("targets")
    assert r.returncode == 0
    assert "openvino" in r.stdout and "onnxruntime" in r.stdout and "available" in r.stdout
