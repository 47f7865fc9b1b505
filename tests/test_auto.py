"""target="auto" / precision="auto": every real target (and precision) here compiled, measured on
the example inputs, the fastest kept; the report lists every alternative with its time or why
it was left out."""
from types import SimpleNamespace

import pytest
import torch

import archfit
from archfit.auto import Alternative
from archfit.core import timing
from archfit.core.timing import interleaved_ms, settled_ms
from archfit.targets.openvino import bf16_units
from conftest import assert_close_to_eager, cli


def test_auto_target_compiles_every_real_target_and_keeps_the_fastest(mlp):
    model, inputs = mlp
    compiled = archfit.trace(model, inputs, target="auto", check_payoff=False)
    alts = {(a.target, a.precision): a for a in compiled.report.alternatives}
    assert {("openvino", "fp32"), ("onnxruntime", "fp32")} <= set(alts)
    assert not {"inf1", "inf2"} & {t for t, _ in alts}  # accelerator profiles only emulate: their speed says nothing
    timed = [a for a in alts.values() if a.ms is not None]
    chosen = [a for a in alts.values() if a.chosen]
    assert len(chosen) == 1 and chosen[0].ms == min(a.ms for a in timed)
    assert compiled.target == chosen[0].target and compiled.report.target == chosen[0].target
    assert_close_to_eager(model, compiled, inputs)
    text = compiled.report.to_text()
    assert "chosen by measurement on this CPU" in text and "onnxruntime" in text and "openvino" in text


def test_auto_precision_measures_what_this_cpu_computes_in(mlp):
    model, inputs = mlp
    compiled = archfit.trace(model, inputs, target="openvino", precision="auto", check_payoff=False)
    alts = {a.precision: a for a in compiled.report.alternatives}
    assert set(alts) == {"fp32", "bf16", "int8", "int8w"}
    assert alts["int8"].ms is None and "no calibration data" in alts["int8"].why  # int8 needs the user's inputs
    assert alts["int8w"].ms is None and "no task gate and validation set" in alts["int8w"].why
    if bf16_units():
        assert alts["bf16"].ms is not None
    else:  # left out, saying why, rather than timing fp32 under a bf16 label
        assert alts["bf16"].ms is None and "no bf16 units" in alts["bf16"].why
        assert compiled.precision == "fp32" and alts["fp32"].chosen


def test_a_candidate_that_fails_is_left_out_with_its_reason(mlp):
    model, inputs = mlp
    # one op kept on the CPU with require_full: every target refuses, and the error names each one's reason
    # (targets other test files register in this process are candidates too: order is not fixed)
    with pytest.raises(archfit.ArchfitError, match=r"target='auto', precision=None: no candidate compiled: ") as e:
        archfit.trace(model, inputs, target="auto", force_cpu=["aten.gelu"], require_full=True)
    assert "openvino fp32: partition: require_full=True" in str(e.value)
    assert "onnxruntime fp32: partition: require_full=True" in str(e.value)


def test_measure_interleaves_in_bursts_and_takes_the_median():
    calls = []
    ms = interleaved_ms({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, seconds=0.0)
    # three rounds, each starting one candidate later; each round a burst per candidate: one
    # untimed call, then at least two timed
    assert calls == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3 + ["a"] * 3 + ["b"] * 3
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())
    assert Alternative("x", "fp32").ms is None


def test_two_candidates_too_close_to_call_are_timed_again_alone():
    import time

    calls = []
    candidates = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b"),
                  "slow": lambda: calls.append("slow") or time.sleep(0.01)}
    # the first look: three rounds of a burst each (one untimed call, two timed); then the two
    # fastest, a and b (no-ops; any gap counts as close here, since two no-ops' timings may differ
    # by any factor on a busy host), are looked at again; "slow" is third, never looked at again
    ms = settled_ms(candidates, seconds=0.0, close=float("inf"))
    first, second = calls[:27], calls[27:]
    assert sorted(set(first)) == ["a", "b", "slow"]
    # the second look: a and b alone, six rounds, each burst one untimed call and three timed
    assert sorted(second) == ["a"] * 24 + ["b"] * 24
    bursts = [second[i:i + 4] for i in range(0, 48, 4)]
    assert all(len(set(b)) == 1 for b in bursts)
    x, y = bursts[0][0], bursts[1][0]  # the faster first; each round starts one candidate later
    assert x != y and [b[0] for b in bursts[:4]] == [x, y, y, x]
    assert set(ms) == {"a", "b", "slow"} and ms["slow"] > max(ms["a"], ms["b"])
    calls.clear()
    settled_ms({"a": candidates["a"], "slow": candidates["slow"]}, seconds=0.0)
    assert len(calls) == 18  # 10 ms against a no-op: told apart at the first look, no second


def test_cli_compile_auto_prints_the_measured_alternatives(mlp, tmp_path):
    out = cli("compile", "mlp-custom-op", "--tiny", "-t", "auto", "--no-compare", "-o", str(tmp_path / "m.archfit"))
    assert out.returncode == 0, out.stderr
    assert "chosen by measurement on this CPU" in out.stdout and "chosen" in out.stdout
    assert archfit.load(tmp_path / "m.archfit").target not in ("inf1", "inf2")  # never an emulation


def _engine_targets(module) -> dict[int, str]:
    from archfit.core.engines import engines_of

    return {m.index: m.target for _name, m in engines_of(module.graph_module)}


def test_per_partition_measures_each_partition_on_every_real_target(mlp):
    model, inputs = mlp
    compiled = archfit.trace(model, inputs, "openvino", force_cpu=["aten.gelu"], check_payoff=False, min_partition_size=1,
                             per_partition=True)
    timings = compiled.report.timings
    assert len(timings) == 2  # before and after the gelu kept in PyTorch
    for tm in timings.values():
        assert "openvino" in tm.measured and "onnxruntime" in tm.measured, tm.measured
        assert tm.target in ("openvino", "onnxruntime")
    assert _engine_targets(compiled) == {i: tm.target for i, tm in timings.items()}
    assert_close_to_eager(model, compiled, inputs)
    text = compiled.report.to_text()
    assert "runs on" in text and "the target per_partition kept" in text
    with pytest.raises(archfit.ArchfitError, match="per_partition mixes targets that run here; inf1 is an emulated"):
        archfit.trace(model, inputs, "inf1", per_partition=True)


def test_a_mixed_file_loads_each_engine_on_its_own_target(mlp, tmp_path, monkeypatch):
    # whatever this CPU measures, partition 0 stays on openvino and partition 1 goes to onnxruntime
    verdicts = iter([{"openvino": 1.0, "onnxruntime": 2.0}, {"openvino": 2.0, "onnxruntime": 1.0}])
    monkeypatch.setattr(timing, "settled_ms", lambda calls, seconds: next(verdicts))
    model, inputs = mlp
    compiled = archfit.trace(model, inputs, "openvino", force_cpu=["aten.gelu"], check_payoff=False, min_partition_size=1,
                             per_partition=True)
    assert _engine_targets(compiled) == {0: "openvino", 1: "onnxruntime"}
    loaded = archfit.load(archfit.save(compiled, tmp_path / "mixed.archfit"))
    assert _engine_targets(loaded) == {0: "openvino", 1: "onnxruntime"} and loaded.target == "openvino"
    assert_close_to_eager(model, loaded, inputs)


def test_auto_with_per_partition_measures_plain_candidates_then_mixes_the_winner(monkeypatch):
    """Each candidate is its own target (per_partition on every candidate would swap engines
    between them and make the names lie); the winner alone is then mixed per partition."""
    import archfit.auto as choose

    calls = []

    class Fake:
        report = None

        def __init__(self, target, precision, per_partition):
            self.target, self.precision, self.per_partition = target, precision, per_partition

        def __call__(self):
            return None

    def trace(model, inputs, options):
        calls.append((options.target, options.precision, options.per_partition))
        return Fake(options.target, options.precision, options.per_partition)

    monkeypatch.setattr(timing, "settled_ms", lambda calls_, seconds: {k: (1.0 if k[0] == "onnxruntime" else 2.0)
                                                                        for k in calls_})
    module = choose.trace_auto(trace, None, (), archfit.TraceOptions("auto", "fp32", per_partition=True))
    # every real target plainly first (in registration order, which follows import order), then the winner mixed
    assert sorted(calls[:-1]) == [("onnxruntime", "fp32", False), ("openvino", "fp32", False)]
    assert calls[-1] == ("onnxruntime", "fp32", True) and module.per_partition
    assert [a.target for a in module.alternatives if a.chosen] == ["onnxruntime"]


def test_auto_does_not_ask_again_for_a_model_on_one_engine(mlp, monkeypatch):
    """A model wholly in one partition: per_partition would time each target's engine on the whole
    model a second time, so the candidates' measurement stands and nothing is mixed; a model
    split by a host op still is."""
    import archfit.pipeline as pipeline
    from archfit.core.engines import EngineModule

    mixed = []
    real = pipeline.mix_targets
    monkeypatch.setattr(pipeline, "mix_targets", lambda *a, **k: mixed.append(1) or real(*a, **k))
    # which target wins is not the point here: short measurements
    monkeypatch.setattr(timing, "settled_ms", lambda calls, seconds: interleaved_ms(calls, 0.05))
    model, inputs = mlp
    whole = archfit.trace(model, inputs, target="auto", per_partition=True, check_payoff=False)
    assert not mixed and len(whole.report.partitions) == 1
    (chosen,) = [a for a in whole.report.alternatives if a.chosen]
    engines = [m.target for m in whole.modules() if isinstance(m, EngineModule)]
    assert whole.target == chosen.target and engines == [chosen.target]
    assert_close_to_eager(model, whole, inputs)
    linear = torch.nn.Linear
    deeper = torch.nn.Sequential(linear(64, 128), torch.nn.ReLU(), linear(128, 128), torch.nn.GELU(),
                                 linear(128, 128), torch.nn.ReLU(), linear(128, 32)).eval()
    split = archfit.trace(deeper, inputs, target="auto", per_partition=True, check_payoff=False,
                          force_cpu=["aten.gelu"])
    assert mixed and len(split.report.partitions) == 2


def test_a_swap_measures_the_host_threads_again_around_the_new_engines(mlp, monkeypatch):
    import archfit.core.compile as compile_mod
    import archfit.core.per_partition as mixed

    measured = []

    def choose(gm, inputs, seconds=0.3):  # stands in for the timing: records which engines it saw
        measured.append(tuple(t for _i, t in sorted(_engine_targets(SimpleNamespace(graph_module=gm)).items())))
        return True

    monkeypatch.setattr(compile_mod, "choose_host_threads", choose)
    monkeypatch.setattr(mixed, "choose_host_threads", choose)
    monkeypatch.setattr(compile_mod, "_in_context_losers", lambda *a: [])  # every partition pays off
    verdicts = iter([{"openvino": 1.0, "onnxruntime": 2.0}, {"openvino": 2.0, "onnxruntime": 1.0}])
    monkeypatch.setattr(timing, "settled_ms", lambda calls, seconds: next(verdicts))
    model, inputs = mlp
    archfit.trace(model, inputs, "openvino", force_cpu=["aten.gelu"], min_partition_size=1, per_partition=True)
    assert measured == [("openvino", "openvino"), ("openvino", "onnxruntime")]  # by partition index


def test_a_candidate_whose_speed_moves_between_rounds_gets_the_second_look():
    """2.5x apart at the first look, but one of the two moved 5x between its rounds: the first look
    cannot tell them apart, so they are timed again (an int8 engine on an AMX host did this)."""
    import itertools
    import time

    counter, calls = itertools.count(), []

    def moving():  # the first look's second round (its calls 3-5) runs five times slower
        n = next(counter)
        calls.append("a")
        time.sleep(0.005 if 3 <= n < 6 else 0.001)

    def steady():
        calls.append("b")
        time.sleep(0.0025)

    ms = settled_ms({"a": moving, "b": steady}, seconds=0.0)
    assert len(calls) > 18 and set(ms) == {"a", "b"}  # 3 rounds of 3 calls each, then the second look
