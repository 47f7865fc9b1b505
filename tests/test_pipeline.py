"""End to end: trace on each shipped target and compare with eager PyTorch."""
import pytest
import torch

import archfit
from archfit.targets.openvino import bf16_units
from conftest import assert_close_to_eager, openvino_layer_types, openvino_layers

TARGETS = ["openvino", "onnxruntime"]


@pytest.mark.parametrize("target", TARGETS)
def test_tiny_bert_one_partition_matches_eager(tiny_bert, target, tmp_path):
    model, inputs = tiny_bert
    compiled = archfit.trace(model, inputs, target=target)
    report = compiled.report
    assert len(report.partitions) == 1
    assert report.verdict == "fits" and report.supported_ops == report.total_ops
    assert report.validation.ok and len(report.validation.checks) == 2
    out = compiled(**inputs)
    assert type(out).__name__ == "BaseModelOutputWithPoolingAndCrossAttentions"  # structure kept
    assert_close_to_eager(model, compiled, inputs)
    # and on a fresh input of the same shape, not just the example
    fresh = {"input_ids": torch.randint(1, 512, (1, 16)), "attention_mask": inputs["attention_mask"]}
    assert_close_to_eager(model, compiled, fresh)
    padded = {"input_ids": fresh["input_ids"], "attention_mask": torch.ones(1, 16, dtype=torch.long)}
    padded["attention_mask"][0, 11:] = 0  # masked keys: the attention op's mask is in play
    assert_close_to_eager(model, compiled, padded)
    if target == "onnxruntime":  # attention handed over as ONNX's Attention op (opset 23), not spelled out
        import onnx

        from archfit.core.engines import engine_named

        engine = engine_named(compiled.graph_module, compiled._sole_engine).engine
        graph = onnx.load_from_string(engine.model).graph
        ops = [n.op_type for n in graph.node]
        assert ops.count("Attention") == model.config.num_hidden_layers and "Softmax" not in ops
        # ONNX Runtime's own fusions run in the session; its SkipLayerNormalization (slower than the
        # Add and LayerNormalization it replaces) is left out: the graph the session runs says so
        from archfit.targets.onnxruntime import _session_options

        opts = _session_options()
        opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        engine._open(opts)
        ran = [n.op_type for n in onnx.load(opts.optimized_model_filepath, load_external_data=False).graph.node]
        assert "SkipLayerNormalization" not in ran and ran.count("LayerNormalization") == ops.count("LayerNormalization")
        assert_close_to_eager(model, compiled, padded)
        # that is archfit's choice: the "ONNX Runtime direct" peer of `archfit bench` keeps ONNX
        # Runtime's defaults, the fusion included
        from archfit.cli.bench import _onnxruntime_direct

        peer = _onnxruntime_direct(model, inputs).engine
        opts = _session_options()
        opts.optimized_model_filepath = str(tmp_path / "peer.onnx")
        peer._open(opts)
        assert "SkipLayerNormalization" in [n.op_type for n in onnx.load(opts.optimized_model_filepath,
                                                                        load_external_data=False).graph.node]


@pytest.mark.parametrize("target", TARGETS)
def test_resnet18_one_partition_matches_eager(tiny_resnet18, target):
    model, inputs = tiny_resnet18
    compiled = archfit.trace(model, inputs, target=target)
    assert len(compiled.report.partitions) == 1 and compiled.report.verdict == "fits"
    assert_close_to_eager(model, compiled, inputs)
    assert_close_to_eager(model, compiled, (torch.randn(1, 3, 64, 64),))


@pytest.mark.parametrize("target", TARGETS)
def test_custom_op_splits_target_cpu_target(mlp_custom, target):
    model, inputs = mlp_custom
    # payoff timing is tested on its own (test_compile.py); tiny partitions may lose to PyTorch
    compiled = archfit.trace(model, inputs, target=target, check_payoff=False)
    report = compiled.report
    assert len(report.partitions) == 2
    first, second = report.partitions
    assert [b.name for b in first.inputs] == ["x"]
    assert [b.name for b in second.inputs] == ["softclip"]  # the CPU op feeds the second partition
    (group,) = report.fallback
    assert group.op == "archfit_zoo.softclip" and group.reason == "no lowering on this target"
    assert group.sources and group.sources[0].startswith("archfit/zoo/toy.py:")
    assert "softclip(x, 3.0)" in group.sources[0]
    engines = [m for m in compiled.graph_module.modules() if type(m).__name__ == "EngineModule"]
    assert [e.index for e in engines] == [0, 1]
    # the linear layers' weights live in the engines only; PyTorch keeps no copy
    assert sum(p.numel() for p in compiled.graph_module.parameters()) == 0
    assert_close_to_eager(model, compiled, inputs)


def test_require_full_lists_the_fallback_node(mlp_custom):
    model, inputs = mlp_custom
    with pytest.raises(archfit.UnsupportedOpsError,
                       match=r"1 node\(s\) would run on the CPU.*softclip \(archfit_zoo.softclip, no lowering on "
                             r"this target at archfit/zoo/toy.py:\d+"):
        archfit.trace(model, inputs, target="openvino", require_full=True)


def test_analyze_names_custom_op_with_source_line_on_every_target(mlp_custom):
    model, inputs = mlp_custom
    analysis = archfit.analyze(model, inputs, targets=TARGETS)
    for target in TARGETS:
        report = analysis[target]
        assert report.verdict == "fits with fallback"
        assert report.supported_ops == report.total_ops - 1
        (group,) = report.fallback
        assert group.op == "archfit_zoo.softclip"
        assert "toy.py" in group.sources[0]
        assert "archfit_zoo.softclip" in report.to_text() and "toy.py" in report.to_text()
        assert report.to_dict()["fallback"][0]["op"] == "archfit_zoo.softclip"


def test_analysis_compiles_its_own_graph_without_capturing_again(mlp_custom, monkeypatch):
    import archfit.pipeline

    model, inputs = mlp_custom
    analysis = archfit.analyze(model, inputs, targets=["openvino"])

    def no_capture(*_a, **_k):
        raise AssertionError("captured again")

    monkeypatch.setattr(archfit.pipeline, "capture_fixed", no_capture)
    compiled = analysis.compile("openvino", check_payoff=False)
    assert [p.nodes for p in compiled.report.partitions] == [p.nodes for p in analysis["openvino"].partitions]
    assert_close_to_eager(model, compiled, inputs)
    with pytest.raises(archfit.ArchfitError, match="holds no model to compile"):
        archfit.Analysis("m", ()).compile()


@pytest.mark.parametrize("target", ("openvino", "inf2"))
def test_bf16_matches_eager_within_bf16_tolerance_and_differs_from_fp32(tiny_resnet18, target):
    model, inputs = tiny_resnet18
    if target == "openvino" and not bf16_units():  # OpenVINO would run fp32: refused, not faked
        with pytest.raises(archfit.ArchfitError, match="precision 'bf16' on target 'openvino': this CPU has no bf16 "
                                                       "units .* use fp32 here, or target inf1/inf2"):
            archfit.trace(model, inputs, target=target, precision="bf16")
        return
    compiled = archfit.trace(model, inputs, target=target, precision="bf16")
    assert compiled.report.validation.ok
    assert_close_to_eager(model, compiled, inputs, precision="bf16")
    # bf16 really is in effect: the error is well above what fp32 gives
    assert compiled.report.validation.max_rel > 1e-4


def test_onnxruntime_refuses_bf16_naming_the_faster_target(tiny_resnet18):
    # ONNX Runtime's CPU provider has no bf16 kernels: a bf16 that loses to its own fp32 is not offered
    model, inputs = tiny_resnet18
    with pytest.raises(archfit.ArchfitError, match="precision 'bf16' on target 'onnxruntime': ONNX Runtime's CPU "
                                                   "provider has no bf16 .* target='openvino' computes in bf16"):
        archfit.trace(model, inputs, target="onnxruntime", precision="bf16")


def test_force_cpu_keeps_op_in_pytorch(tiny_bert):
    model, inputs = tiny_bert
    compiled = archfit.trace(model, inputs, target="onnxruntime", force_cpu=["aten.gelu"], check_payoff=False)
    groups = {g.op: g for g in compiled.report.fallback}
    assert groups["aten.gelu"].reason == "forced to CPU by the user" and groups["aten.gelu"].count == 2
    assert len(compiled.report.partitions) == 3  # before, between and after the two gelus
    assert_close_to_eager(model, compiled, inputs)


def test_wrong_input_shape_is_one_clear_line(tiny_resnet18):
    model, inputs = tiny_resnet18
    compiled = archfit.trace(model, inputs, target="onnxruntime", validate=False, check_payoff=False)
    with pytest.raises(archfit.InputError, match=r"input 'x': expected \(1, 3, 64, 64\) float32, got \(2, 3, 64, 64\)"):
        compiled(torch.randn(2, 3, 64, 64))


def test_unknown_target_and_precision_errors(tiny_resnet18):
    model, inputs = tiny_resnet18
    with pytest.raises(archfit.TargetError, match="unknown target 'tpu'.*openvino"):
        archfit.trace(model, inputs, target="tpu")
    with pytest.raises(archfit.ArchfitError, match="precision 'fp8'"):
        archfit.trace(model, inputs, target="openvino", precision="fp8")


_SEEN_THREADS: list[int] = []


@torch.library.custom_op("archfit_test::thread_probe", mutates_args=())
def _thread_probe(x: torch.Tensor) -> torch.Tensor:
    _SEEN_THREADS.append(torch.get_num_threads())  # what PyTorch's host part runs with
    return x.clone()


@_thread_probe.register_fake
def _(x):
    return torch.empty_like(x)


class _Probed(torch.nn.Module):
    def __init__(self, heavy_host: bool):
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)
        self.heavy_host = heavy_host

    def forward(self, x):
        h = self.b(self.a(x))
        h = torch.ops.archfit_test.thread_probe(h)  # no target lowers it: the host runs it between engines
        h = self.c(h) if not self.heavy_host else h @ self.c.weight  # a matmul left on the host
        return self.c(h)


def test_threads_between_engines_are_measured_recorded_and_saved(monkeypatch, tmp_path):
    """PyTorch's OpenMP workers spin after each op and may take the next engine's cores (DistilBERT
    with one op forced mid-graph: +19% -> +2%) or keep them warm (DLRM: the reverse): a host part
    that only glues engines is timed both ways at compile time, the faster recorded, honoured on
    every call and kept by saved files; a host doing heavy arithmetic keeps PyTorch's threads."""
    import archfit.core.compile as compile_
    import archfit.core.timing as timing
    from archfit.core.threads import choose_host_threads

    x = torch.randn(4, 32)
    monkeypatch.setattr(compile_, "_in_context_losers", lambda *a: {})  # tiny partitions stay on the target
    monkeypatch.setattr(timing, "interleaved_ms", lambda calls, seconds, **kw: {True: 1.0, False: 2.0})  # one thread wins
    light = archfit.trace(_Probed(False).eval(), (x,), "openvino", min_partition_size=1)
    heavy = archfit.trace(_Probed(True).eval(), (x,), "openvino", min_partition_size=1, force_cpu=["aten.matmul"])
    assert len(light.report.partitions) == 2 and light.one_thread is True
    assert {g.op for g in heavy.report.fallback} >= {"aten.matmul"} and heavy.one_thread is None
    loaded = archfit.load(archfit.save(light, tmp_path / "light.archfit"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # test workers run one thread: give the host two to take away
    try:
        for module, want in ((light, 1), (loaded, 1), (heavy, 2)):
            _SEEN_THREADS.clear()
            module(x)
            assert _SEEN_THREADS == [want] and torch.get_num_threads() == 2  # restored after the call
        monkeypatch.setattr(timing, "interleaved_ms", lambda calls, seconds, **kw: {True: 2.0, False: 1.0})
        light.one_thread = choose_host_threads(light.graph_module, (x,))  # measured the other way: PyTorch keeps its threads
        _SEEN_THREADS.clear()
        light(x)
        assert _SEEN_THREADS == [2]
        monkeypatch.setattr(timing, "interleaved_ms", lambda calls, seconds, **kw: {True: 1.02, False: 1.0})
        assert choose_host_threads(light.graph_module, (x,)) is True  # a near-tie (noise) goes to one thread
    finally:
        torch.set_num_threads(before)


class _Picks(torch.nn.Module):
    """Index picks on several dims: DLRM's pairwise pick z[:, li, lj], a pick on leading dims with
    negative indices, and one on non-consecutive dims (a form the OpenVINO rewrite leaves alone)."""

    def __init__(self):
        super().__init__()
        li, lj = torch.tril_indices(6, 6, offset=-1)
        self.register_buffer("li", li)
        self.register_buffer("lj", lj)
        self.register_buffer("neg", torch.tensor([-1, 0, -3, 2]))

    def forward(self, x):
        z = torch.bmm(x, x.transpose(1, 2))  # (2, 6, 6)
        return z[:, self.li, self.lj], z[self.neg % 2, self.neg], z[self.neg % 2, :, self.neg]


def test_openvino_hands_multi_dim_picks_over_as_one_gather():
    """x[:, i, j] reaches OpenVINO as flatten + index_select (targets/lowering.index_as_gather):
    the compiled engine runs no Transpose for it, and equals eager, negative indices included;
    the non-consecutive form stays an aten.index."""
    from archfit.targets.openvino import _lower

    model, x = _Picks().eval(), torch.randn(2, 6, 8)
    taken = _PicksOnly(model)
    picks = archfit.trace(taken, (x,), "openvino", check_payoff=False, cache=False)
    assert_close_to_eager(taken, picks, (x,))
    assert len(picks.report.partitions) == 1 and "Transpose" not in openvino_layer_types(picks)
    ep = _lower(torch.export.export(model, (x,)), "fp32")
    index = [n for n in ep.graph.nodes if n.target is torch.ops.aten.index.Tensor]
    assert len(index) == 1 and index[0].args[1][1] is None  # only z[i, :, j] is left
    torch.testing.assert_close(ep.module()(x), model(x))


class _Head(torch.nn.Module):
    """A classifier head: 2048x2048 weights (the rewrite's 4M-element floor) read by few rows."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = torch.nn.Linear(2048, 2048), torch.nn.Linear(2048, 16)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)))


def test_openvino_fp32_linears_get_the_kernel_their_rows_run_fastest_on():
    """targets/lowering: with at most 8 rows against large weights, relu(linear(x)) reaches OpenVINO
    as clamp_min, which it does not fuse, so the FullyConnected runs on MLAS (gemv_relu_apart); with
    more rows a linear with no activation after it gets a +-float32-max clamp, which it fuses, so it
    runs on oneDNN (gemm_clamped), as the fused fc does. Equal to eager either way; bf16 programs
    are not edited, nor any on a CPU without AVX-512, where the edits are unmeasured."""
    from archfit.targets import openvino
    from archfit.targets.openvino import _lower

    model = _Head().eval()
    as_written = ["linear.default", "relu.default", "linear.default"]

    def ops(rows: int, precision: str) -> list[str]:
        ep = _lower(torch.export.export(model, (torch.randn(rows, 2048),)), precision)
        return [n.target.__name__ for n in ep.graph.nodes if n.op == "call_function"]

    assert ops(1, "bf16") == ops(16, "bf16") == as_written
    with pytest.MonkeyPatch.context() as mp:  # as on a CPU without AVX-512
        mp.setattr(openvino, "linear_edits", lambda: False)
        assert ops(1, "fp32") == ops(16, "fp32") == as_written
    if not openvino.linear_edits():
        return
    assert ops(1, "fp32") == ["linear.default", "clamp_min.default", "linear.default"]
    assert ops(16, "fp32") == ["linear.default", "relu.default", "linear.default", "clamp.default"]
    for rows, mlas in ((1, True), (16, False)):
        x = torch.randn(rows, 2048)
        head = archfit.trace(model, (x,), "openvino", check_payoff=False, cache=False)
        assert_close_to_eager(model, head, (x,))
        kernels = [kernel for kind, kernel in openvino_layers(head) if kind == "FullyConnected"]
        assert len(kernels) == 2 and all(("mlas" in k) is mlas for k in kernels), kernels
        assert not {"Relu", "Clamp"} & openvino_layer_types(head)  # fused, or a Maximum after MLAS


def test_openvino_fp32_linears_compiled_for_a_range_of_rows_get_the_kernel_of_its_most_rows():
    """compile_dynamic takes the linear edits too, by the most rows its range holds: up to 8
    rows, relu(linear) as clamp_min (MLAS); up to 64, a clamp after the linear without an
    activation (oneDNN, as the fused one). The engine equals eager across the range."""
    from archfit.targets import openvino
    from archfit.targets.openvino import _lower, compile_dynamic

    if not openvino.linear_edits():
        pytest.skip("the fp32 linear edits are taken on CPUs with AVX-512 only (tested on one in the test above)")
    model = _Head().eval()

    def export(high: int):
        rows = torch.export.Dim("rows", min=2, max=high)
        return torch.export.export(model, (torch.randn(4, 2048),), dynamic_shapes=({0: rows},), strict=False)

    def ops(ep) -> list[str]:
        return [n.target.__name__ for n in ep.graph.nodes if n.op == "call_function"]

    assert ops(_lower(export(8), "fp32")) == ["linear.default", "clamp_min.default", "linear.default"]
    assert ops(_lower(export(64), "fp32")) == ["linear.default", "relu.default", "linear.default", "clamp.default"]
    engine = compile_dynamic(export(64), [[(2, 64), 2048]], "fp32")
    kernels = [kernel for kind, kernel in engine.layers() if kind == "FullyConnected"]
    assert len(kernels) == 2 and not any("mlas" in k for k in kernels), kernels
    for rows in (2, 9, 64):
        x = torch.randn(rows, 2048)
        with torch.no_grad():
            torch.testing.assert_close(engine.run([x])[0], model(x), atol=1e-4, rtol=1e-4)


class _Rows(torch.nn.Module):
    """Linears whose rows span 4 KiB (1024 fp32 in features), one weight read twice (tied), one of
    few outputs, and one of 768 in features."""

    def __init__(self):
        super().__init__()
        self.wide, self.tied = torch.nn.Linear(1024, 768), torch.nn.Linear(1024, 1024, bias=False)
        self.few = torch.nn.Linear(1024, 512)  # few outputs: the pad would cost more than it saves
        self.narrow = torch.nn.Linear(768, 8)

    def forward(self, x, z):
        return self.wide(x), self.tied(self.tied(x)), self.narrow(z), self.few(x)


def test_onnxruntime_pads_rows_that_alias_in_mlas_kernel():
    """targets/lowering.linear_rows_unaliased: a linear of 12 rows or more whose rows span a multiple
    of 4 KiB reaches ONNX Runtime with 16 zero columns on x (a Pad) and on its weights (in the
    program's state, so the initializer is padded, not padded per call); fewer rows, other widths,
    fewer than 768 outputs and a weight two linears share are left as written, as is every linear on a CPU without
    AVX-512. Equal to eager."""
    import onnx

    from archfit.core.engines import EngineModule
    from archfit.targets import onnxruntime

    model = _Rows().eval()

    def onnx_graph(rows: int):
        inputs = (torch.randn(rows, 1024), torch.randn(rows, 768))
        compiled = archfit.trace(model, inputs, "onnxruntime", check_payoff=False, cache=False)
        assert_close_to_eager(model, compiled, inputs)
        engine = next(m.engine for m in compiled.modules() if isinstance(m, EngineModule))
        graph = onnx.load_from_string(engine.model).graph
        return [n.op_type for n in graph.node].count("Pad"), {tuple(i.dims) for i in graph.initializer if len(i.dims) == 2}

    if onnxruntime.linear_edits():
        pads, weights = onnx_graph(12)
        assert pads == 1 and {(1040, 768), (768, 1040)} & weights, weights  # the wide linear's, as MatMul or Gemm
        assert (1024, 1024) in weights and not {(1040, 1024), (1024, 1040)} & weights  # tied: as written
        assert {(1024, 512), (512, 1024)} & weights  # few outputs: as written
    assert onnx_graph(11)[0] == 0
    with pytest.MonkeyPatch.context() as mp:  # as on a CPU without AVX-512
        mp.setattr(onnxruntime, "linear_edits", lambda: False)
        assert onnx_graph(12)[0] == 0


class _PicksOnly(torch.nn.Module):
    """The two forms the rewrite takes."""

    def __init__(self, picks):
        super().__init__()
        self.picks = picks

    def forward(self, x):
        return self.picks(x)[:2]


class _Lookups(torch.nn.Module):
    """Lookups of id columns stacked with a dense feature (DLRM's form), with a negative column
    index and a negative stack dim, one lookup stacked twice, and a stack along another dim that
    the rewrite must leave as it is."""

    def __init__(self):
        super().__init__()
        self.tables = torch.nn.ModuleList(torch.nn.Embedding(10 + k, 4) for k in range(3))

    def forward(self, dense, ids):
        looked = [t(ids[:, i]) for i, t in enumerate(self.tables)]
        last = self.tables[0](ids[:, -1])
        feats = torch.stack([dense] + looked + [last, last], dim=-2)  # (B, 6, 4)
        across = torch.stack([t(ids[:, i]) for i, t in enumerate(self.tables)], dim=0)  # (3, B, 4): another dim
        return feats, across


def test_stacked_lookups_read_their_id_column_split_off():
    """targets/lowering.stack_as_concat: stacked lookups of id columns reach the backends as one
    Split and a lookup per column, without a Squeeze/Unsqueeze pair each (DLRM: 52 fewer ONNX
    nodes); the edited program and both engines equal eager."""
    import collections

    import onnx

    from archfit.core.engines import EngineModule
    from archfit.targets.lowering import lower, stack_as_concat

    model, dense, ids = _Lookups().eval(), torch.randn(5, 4), torch.randint(0, 10, (5, 3))
    ep = lower(torch.export.export(model, (dense, ids)), ((torch.ops.aten.stack.default, stack_as_concat),))
    ops = collections.Counter(n.target for n in ep.graph.nodes if n.op == "call_function")
    aten = torch.ops.aten
    assert ops[aten.split_with_sizes.default] == 1 and ops[aten.stack.default] == 0
    assert ops[aten.select.int] == 3  # the `across` stack keeps its selects; the feats lookups lost theirs
    for got, want in zip(ep.module()(dense, ids), model(dense, ids)):
        assert torch.equal(got, want)
    compiled = {t: archfit.trace(model, (dense, ids), t, check_payoff=False, cache=False)
                for t in ("onnxruntime", "openvino")}
    for module in compiled.values():
        assert_close_to_eager(model, module, (dense, ids))
    (engine,) = [m.engine for m in compiled["onnxruntime"].modules() if isinstance(m, EngineModule)]
    nodes = collections.Counter(n.op_type for n in onnx.load_from_string(engine.model).graph.node)
    assert nodes["Split"] == 1 and nodes["Squeeze"] == 0 and nodes["Unsqueeze"] == 1 + 3, nodes  # dense; across


def test_openvino_engine_hands_matching_inputs_over_shared_and_converts_the_rest(monkeypatch):
    """OpenVINOEngine.run binds inputs whose dtype matches the engine's port as shared tensors (no
    Python converters: half a small engine's call), and leaves any other input to OpenVINO's
    converters; both give the same answers as eager."""
    import openvino

    from archfit.core.engines import EngineModule

    class Pick(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(20, 8)

        def forward(self, x, ids):
            return torch.relu(x + self.table(ids))

    model, x, ids = Pick().eval(), torch.randn(4, 8), torch.randint(0, 20, (4,))
    compiled = archfit.trace(model, (x, ids), "openvino", check_payoff=False, cache=False)
    (engine,) = [m.engine for m in compiled.modules() if isinstance(m, EngineModule)]
    made, tensor = [], openvino.Tensor
    monkeypatch.setattr(openvino, "Tensor", lambda *a, **k: made.append(k) or tensor(*a, **k))
    with torch.no_grad():
        want = model(x, ids)
    (got,) = engine.run([x, ids])
    assert made == [{"shared_memory": True}] * 2
    torch.testing.assert_close(got, want)
    made.clear()
    (got,) = engine.run([x, ids.to(torch.int32)])  # another dtype than the port's: OpenVINO converts it
    assert made == []  # OpenVINO's own converters made the tensors, not run's shared binding
    torch.testing.assert_close(got, want)


def test_misuse_is_one_line_saying_what_to_do(tmp_path):
    """Found trying archfit as a new user would: each was a raw error from a dependency or silence."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU()).eval()
    with pytest.raises(archfit.ModelError, match=r"Sequential fails on its example inputs in eager PyTorch "
                                                  r"\(RuntimeError: .*\); the inputs given: input \(2, 4\) int64"):
        archfit.trace(model, (torch.ones(2, 4, dtype=torch.long),), "onnxruntime")
    with pytest.raises(archfit.ArchfitError, match=r"force_cpu='aten\.conv2d' matches no op or node of the model "
                                                   r"\(close names: aten\.linear, aten\.gelu\)"):
        archfit.trace(model, (torch.ones(2, 4),), "onnxruntime", force_cpu=["aten.conv2d"])
    for bad in (lambda: archfit.choose_buckets([], 4), lambda: archfit.Buckets({"x": 1}, sample=(-3, 5))):
        with pytest.raises(archfit.ArchfitError) as e:  # one line, and still a ValueError for code catching one
            bad()
        assert isinstance(e.value, ValueError) and len(str(e.value).splitlines()) == 1
    with pytest.raises(archfit.ArtifactError, match="is a directory; archfit.load takes the one file archfit.save"):
        archfit.load(tmp_path)
    quantized = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LSTM(4, 4)),
                                                       {torch.nn.Linear, torch.nn.LSTM}, dtype=torch.qint8)
    with pytest.raises(archfit.ModelError, match=r"Sequential has layers torch quantized already: 0 \(Linear\), "
                                                 r"1 \(LSTM\); .*precision='int8'"):
        archfit.analyze(quantized, (torch.ones(1, 2, 4),), targets=["openvino"])
