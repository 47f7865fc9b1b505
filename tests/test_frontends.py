"""ONNX and MXNet models through the same pipeline (frontends/): reports name the user's own
ops, compiled outputs equal the source framework's (ONNX Runtime on the file, MXNet's own saved
outputs), the CLI on files, one-line errors. TensorFlow/Keras: test_frontends_tf.py."""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import archfit
from archfit.errors import ModelError
from conftest import cli

ATOL, RTOL = archfit.TOLERANCES["fp32"]


def close(got, want, scale=None):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    bound = ATOL + RTOL * float(np.abs(want).max() if scale is None else scale)
    assert float(np.abs(got - want).max()) <= bound


class Block(torch.nn.Module):
    """Conv, batch norm, a residual add, a reshape computed from the input's shape, attention-
    style matmul and softmax: the shape subgraphs (Shape/Gather/Concat -> Reshape) exporters emit."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x))) + self.conv(x)
        b, c = y.shape[0], y.shape[1]
        t = y.reshape(b, c, -1).transpose(1, 2)
        a = torch.softmax(t @ t.transpose(1, 2) / 8, dim=-1) @ t
        return self.fc(a.mean(1))


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    torch.manual_seed(0)
    model = Block().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 8, 8)
    path = tmp_path_factory.mktemp("onnx") / "block.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["pixels"], dynamo=True, verbose=False)
    return str(path), {"pixels": x.numpy()}


def test_onnx_report_names_onnx_nodes_and_trace_matches_onnxruntime(onnx_file):
    path, feed = onnx_file
    analysis = archfit.analyze(path, feed, targets=["openvino"])
    ops = {s.op: s for s in analysis["openvino"].source_ops}
    assert {"ONNX Conv", "ONNX MatMul", "ONNX Softmax"} <= set(ops)
    assert ops["ONNX Conv"].flops > 0 and ops["ONNX Conv"].on_target == ops["ONNX Conv"].count
    assert "by ONNX op" in analysis.to_text()
    # forcing an op to the CPU names the ONNX node it came from
    forced = archfit.analyze(path, feed, targets=["openvino"], force_cpu=["softmax"])
    sources = [s for g in forced["openvino"].fallback for s in g.sources]
    assert any(s.startswith("ONNX Softmax '") for s in sources), sources

    compiled = archfit.trace(path, feed, "onnxruntime")
    want = ort.InferenceSession(path).run(None, feed)[0]
    got = compiled(feed["pixels"])  # numpy in, numpy out
    assert isinstance(got, np.ndarray)
    close(got, want)
    labels = [c.label for c in compiled.report.validation.checks]
    assert "example inputs vs ONNX Runtime on the ONNX file" in labels


def test_bad_inputs_say_which_and_what_to_do(onnx_file, tmp_path):
    path, feed = onnx_file
    with pytest.raises(ModelError, match=r"takes inputs 'pixels'; got 'image'.*name the inputs"):
        archfit.analyze(path, {"image": feed["pixels"]})
    broken = onnx.load(path)
    broken.graph.node[0].input[0] = "nowhere"
    bad = tmp_path / "broken.onnx"
    onnx.save(broken, str(bad))
    with pytest.raises(ModelError, match=r"broken.onnx fails onnx.checker: .*re-export it"):
        archfit.analyze(str(bad), feed)
    with pytest.raises(ModelError, match=r"dim 2 is 6, the file fixes it at 8"):
        archfit.analyze(path, {"pixels": np.zeros((2, 3, 6, 6), np.float32)})


MXNET = os.path.join(os.path.dirname(__file__), "data", "mxnet")  # written by tools/mxnet_fixtures.py, with MXNet


def mxnet_case(name):
    io = np.load(os.path.join(MXNET, f"{name}-io.npz"))
    feed = {k[3:]: io[k] for k in io.files if k.startswith("in:")}
    outs = [io[k] for k in sorted(k for k in io.files if k.startswith("out:"))]
    return os.path.join(MXNET, f"{name}-symbol.json"), feed, outs


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_encoder"])
def test_mxnet_files_match_mxnets_own_outputs_without_mxnet(name):
    assert "mxnet" not in sys.modules
    path, feed, want = mxnet_case(name)
    analysis = archfit.analyze(path, feed, targets=["openvino"])
    ops = {s.op for s in analysis["openvino"].source_ops}
    assert ("MXNet Convolution" if name == "tiny_resnet" else "MXNet batch_dot") in ops, ops
    compiled = archfit.trace(path, feed, "onnxruntime" if name == "tiny_resnet" else "openvino")
    got = compiled(*feed.values())
    got = got if isinstance(got, list) else [got]
    assert len(got) == len(want) and all(isinstance(g, np.ndarray) for g in got)
    for g, w in zip(got, want):
        close(g, w)


def test_mxnet_errors_name_the_file(tmp_path):
    path, feed, _ = mxnet_case("tiny_resnet")
    lone = tmp_path / "net-symbol.json"
    lone.write_text(open(path).read())
    with pytest.raises(ModelError, match=r"net-symbol.json has no params file beside it \(expected net-0000.params"):
        archfit.analyze(str(lone), feed)
    (tmp_path / "net-0000.params").write_bytes(open(os.path.join(MXNET, "tiny_resnet-0000.params"), "rb").read()[:500])
    with pytest.raises(ModelError, match=r"net-0000.params( is truncated|: an array of shape .* runs past the end)"):
        archfit.analyze(str(lone), feed)
    with pytest.raises(ModelError, match=r"takes inputs 'data'; got 'x'"):
        archfit.analyze(path, {"x": feed["data"]})
    done = cli("analyze", path)
    assert done.returncode != 0 and "give each input one with --shape" in done.stderr + done.stdout
    done = cli("compile", path, "--shape", "data=2x3x32x32", "-o", str(tmp_path / "r.archfit"), "--no-compare")
    assert done.returncode == 0, done.stderr
    assert "MXNet Convolution" in done.stdout
    np.save(tmp_path / "data.npy", feed["data"])  # `archfit run` on the file, against MXNet's own output
    done = cli("run", str(tmp_path / "r.archfit"), "--input", f"data={tmp_path / 'data.npy'}", "-d", str(tmp_path))
    assert done.returncode == 0, done.stderr
    close(np.load(tmp_path / "output.npy"), mxnet_case("tiny_resnet")[2][0])


def test_mxnet_zoo_files_written_without_mxnet_compile(tmp_path):
    """The zoo writes MXNet files itself (full size has no MXNet to write it): the params writer
    round-trips through the reader, and the tiny ResNet-18 v1 and encoder compile and validate."""
    from archfit import zoo
    from archfit.frontends.mxnet import read_params
    from archfit.zoo.mxnet_models import write_params

    arrays = {"arg:w": np.arange(6, dtype=np.float32).reshape(2, 3), "aux:ids": np.array([3, 1], np.int64)}
    write_params(tmp_path / "x-0000.params", arrays)
    back = read_params(tmp_path / "x-0000.params")
    assert set(back) == {"w", "ids"} and np.array_equal(back["w"], arrays["arg:w"]) and back["ids"].dtype == np.int64
    for name, target in (("mxnet-resnet18", "onnxruntime"),):  # the encoder's ops: the MXNet-written fixture
        path, feed = zoo.build(name, tiny=True)
        compiled = archfit.trace(path, feed, target)
        assert compiled.report.validation.ok and not compiled.report.fallback
        out = compiled(feed)
        assert isinstance(out if not isinstance(out, list) else out[0], np.ndarray)


def test_cli_compiles_an_onnx_file(onnx_file, tmp_path):
    path, feed = onnx_file
    done = cli("compile", path, "-t", "onnxruntime", "-o", str(tmp_path / "block.archfit"), "--no-compare")
    assert done.returncode == 0, done.stderr
    assert "ONNX Conv" in done.stdout and "vs ONNX Runtime on the ONNX file" in done.stdout
    close(archfit.load(tmp_path / "block.archfit")(feed["pixels"]), ort.InferenceSession(path).run(None, feed)[0])
