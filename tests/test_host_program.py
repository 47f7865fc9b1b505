"""A file is data, never a program: crafted host programs (written consistently, digests and all,
as an attacker would) are refused at load and by `inspect` with one line naming the node."""
import hashlib
import json
import zipfile

import pytest
import torch

import archfit
from archfit.artifact.host_program import refusal, resolve_op
from conftest import cli


def craft(src, dst, edit_nodes):
    """A consistent file whose main/host.json was changed by edit_nodes(nodes) -> nodes."""
    with zipfile.ZipFile(src) as z:
        manifest = json.loads(z.read("manifest.json"))
        members = {i.filename: z.read(i.filename) for i in z.infolist() if i.filename != "manifest.json"}
    nodes = edit_nodes(json.loads(members["main/host.json"]))
    members["main/host.json"] = json.dumps(nodes).encode()
    manifest["files"]["main/host.json"] = hashlib.sha256(members["main/host.json"]).hexdigest()
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr("manifest.json", json.dumps(manifest))
        for name, data in members.items():
            z.writestr(name, data)
    return dst


def before_output(nodes, *extra):
    return nodes[:-1] + list(extra) + nodes[-1:]


def call(name, target, *args):
    return {"name": name, "op": "call_function", "target": target, "args": {"tuple": list(args)}, "kwargs": {}}


def refused(path, match):
    with pytest.raises(archfit.ArtifactError, match=match) as e:
        archfit.load(path)
    assert "\n" not in str(e.value)
    with pytest.raises(archfit.ArtifactError, match=match):
        archfit.artifact.read_manifest(path)  # what `inspect` reads


WRITE_FILE = lambda marker: [  # noqa: E731 - the from_file + fill_ attack from the hardening issue
    call("f", "aten.from_file.default", str(marker), True, 16),
    call("g", "aten.fill_.Scalar", {"node": "f"}, 1.0),
]


@pytest.mark.parametrize("make, match", [
    (lambda m: WRITE_FILE(m), r"calls aten::from_file.default, which archfit refuses to run from a file: it may read"),
    (lambda m: [call("g", "aten.relu.default", {"node": "later"})], r"uses node 'later' before it is defined"),
    (lambda m: [call("g", "aten.fill_.Scalar", {"node": "x"}, 1.0)], r"aten::fill_.Scalar.*it mutates its inputs"),
    (lambda m: [call("c", "aten.add.__class__")], r"names an unknown function 'aten.add.__class__'"),
    (lambda m: [call("c", "aten.__getattribute__.default")], r"names an unknown function"),
    (lambda m: [call("c", "builtins.exec.default", "import os")], r"needs op builtins::exec.default, which is not "
                                                                  r"registered"),
    (lambda m: [call("c", "profiler._record_function_enter.default", "x")], r"refuses to run from a file"),
    (lambda m: [call("c", "aten.rand.default", [2])], r"it draws random numbers"),
    (lambda m: [{"name": "c", "op": "call_module", "target": "target_0.__class__", "args": {"tuple": []},
                 "kwargs": {}}],
     r"reads 'target_0.__class__', which the file does not hold"),
    (lambda m: [{"name": "c", "op": "get_attr", "args": {"tuple": []}, "kwargs": {},
                 "target": f'a"), __import__("os").system("touch {m}"), getattr(self, "b'}],
     r"which the file does not hold"),
    (lambda m: [{"name": f'x = __import__("os").system("touch {m}")', "op": "call_function",
                 "target": "aten.relu.default", "args": {"tuple": []}, "kwargs": {}}], r"is not a fresh identifier"),
    (lambda m: [{"name": "k", "op": "call_function", "target": "aten.relu.default", "args": {"tuple": [{"node": "x"}]},
                 "kwargs": {f'x=__import__("os").system("touch {m}"),y': 1}}], r"has malformed arguments"),
    (lambda m: [call("e", "aten.relu.default", {"eval": "1+1"})], r"unknown value"),
    (lambda m: [call("d", "aten.relu.default", {"dtype": "load"})], r"unknown value"),
    (lambda m: [call("n", "aten.relu.default", {"list": [{"list": [{"list": [{"list": [{"list": [{"list": [
        {"list": [{"list": [{"list": [1]}]}]}]}]}]}]}]}]})], r"nested deeper than"),
])
def test_crafted_host_programs_are_refused(saved_mlp, tmp_path, make, match):
    marker = tmp_path / "pwned"
    bad = craft(saved_mlp, tmp_path / "bad.archfit", lambda nodes: before_output(nodes, *make(marker)))
    refused(bad, match)
    assert not marker.exists()


def test_node_count_and_output_are_bounded(saved_mlp, tmp_path, monkeypatch):
    from archfit.artifact import host_program

    monkeypatch.setattr(host_program, "MAX_NODES", 50)
    many = craft(saved_mlp, tmp_path / "many.archfit", lambda nodes: before_output(
        nodes, *[call(f"r{i}", "aten.relu.default", {"node": "x"}) for i in range(60)]))
    refused(many, "at most 50 nodes")
    no_output = craft(saved_mlp, tmp_path / "noout.archfit", lambda nodes: nodes[:-1])
    refused(no_output, "exactly one output node")


def test_cli_refuses_crafted_file_with_exit_1(saved_mlp, tmp_path):
    marker = tmp_path / "pwned"
    bad = craft(saved_mlp, tmp_path / "bad.archfit", lambda nodes: before_output(nodes, *WRITE_FILE(marker)))
    for command in (["inspect", str(bad)], ["run", str(bad)]):
        r = cli(*command)
        assert r.returncode == 1, r.stderr
        assert r.stderr.count("\n") == 1 and "aten::from_file.default" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()


def test_the_vocabulary_keeps_what_captured_graphs_compute():
    aten, add = torch.ops.aten, torch.ops.aten.add.Tensor
    for op in (torch.ops.aten.linear.default, torch.ops.aten._softmax.default, torch.ops.aten.embedding.default,
               torch.ops.aten.cumsum.default, torch.ops.aten._to_copy.default, torch.ops.aten.index.Tensor,
               torch.ops.aten.scaled_dot_product_attention.default, torch.ops.aten.view.default):
        assert refusal(op) is None, op
    assert resolve_op("aten.add.Tensor") is torch.ops.aten.add.Tensor
    resolve_op.cache_clear()
    resolve_op("aten.mul.Tensor")
    # looking ops up by name leaves torch's registry as it was (a second torch.ops.aten broke exporters)
    assert torch.ops.aten is aten and torch.ops.aten.add.Tensor is add


def test_loaded_program_equals_traced_outputs(saved_mlp, mlp_custom):
    model, inputs = mlp_custom
    loaded = archfit.load(saved_mlp)
    assert type(loaded.graph_module).__name__ == "HostProgram"  # interpreted, never code generated from the file
    with torch.no_grad():
        assert torch.allclose(loaded(*inputs), model(*inputs), atol=1e-4, rtol=1e-3)


def test_operator_spelled_ops_on_the_host_save_and_load(tmp_path):
    """`a & b` on tensors captures as aten.__and__; a file never names a dunder, so such ops are
    stored as the bitwise ops computing the same, and the saved file loads and answers alike."""
    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x, a, b):
            keep = (a & b) | (a ^ b) | ((a.long() << 1) >> 1).bool()
            return self.lin(x) * keep.float()

    model = Masked().eval()
    inputs = (torch.randn(4, 8), torch.rand(4, 8) > 0.5, torch.rand(4, 8) > 0.5)
    compiled = archfit.trace(model, inputs, target="openvino", check_payoff=False, validate=False,
                             force_cpu=["__and__", "__or__", "__xor__", "__lshift__", "__rshift__"])
    host = {str(n.target) for n in compiled.graph_module.graph.nodes if n.op == "call_function"}
    assert {"aten.__and__.Tensor", "aten.__or__.Tensor", "aten.__xor__.Tensor"} <= host, host
    path = archfit.save(compiled, tmp_path / "masked.archfit")
    with zipfile.ZipFile(path) as z:
        stored = z.read("main/host.json").decode()
    assert "__" not in stored and "aten.bitwise_and.Tensor" in stored
    with torch.no_grad():
        assert torch.equal(archfit.load(path)(*inputs), compiled(*inputs))
        assert torch.allclose(compiled(*inputs), model(*inputs), atol=1e-5)


def test_an_nn_sequential_whose_weights_stay_on_the_host_saves_and_loads(tmp_path):
    """An nn.Sequential's weights are `0.weight`, read by nodes torch.fx names `_0_weight`: plain
    names, not dunders. The file was saved and then refused at load ("not a fresh identifier")."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 4)).eval()
    x = torch.randn(2, 8)
    compiled = archfit.trace(model, (x,), target="openvino", check_payoff=False, validate=False, force_cpu=["linear"])
    read = {(n.name, n.target) for n in compiled.graph_module.graph.nodes if n.op == "get_attr"}
    assert ("_0_weight", "0.weight") in read, read
    path = archfit.save(compiled, tmp_path / "sequential.archfit")
    with torch.no_grad():
        assert torch.equal(archfit.load(path)(x), compiled(x))
