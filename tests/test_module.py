"""The module users call: inputs it refuses rather than answer wrongly."""
import pytest
import torch

import archfit


def test_nan_and_inf_are_refused_when_asked(saved_mlp, mlp_custom):
    _, (x,) = mlp_custom
    module = archfit.load(saved_mlp)
    bad = x.clone()
    bad[0, 0], bad[0, 1] = float("nan"), float("inf")
    module(bad)  # off by default: passed through as the target propagates them
    module.check_finite = True
    assert all(m.check_finite for m in module.modules() if isinstance(m, archfit.ArchfitModule))
    with pytest.raises(archfit.InputError, match=r"input 'x' holds 2 NaN/Inf value\(s\)"):
        module(bad)
    assert torch.isfinite(module(x)).all()


def test_tensors_without_values_are_refused(saved_mlp, mlp_custom):
    _, (x,) = mlp_custom
    module = archfit.load(saved_mlp)
    with pytest.raises(archfit.InputError, match=r"input 'x' is on the meta device"):
        module(torch.empty(x.shape, device="meta"))
    with pytest.raises(archfit.InputError, match=r"called with 2 input\(s\) in another structure"):
        module(x, x)


def test_plain_calls_skip_pytree_and_still_refuse_what_is_not_the_traced_input(mlp):
    model, (x,) = mlp
    module = archfit.trace(model, (x,), "openvino", check_payoff=False, validate=False)
    assert module._plain == (True, "leaf")  # one positional tensor in, one tensor out
    out = module(x)
    assert isinstance(out, torch.Tensor) and torch.allclose(out, model(x), atol=1e-4)
    with pytest.raises(archfit.InputError, match=r"input 'input': expected a tensor \(4, 64\) float32, got list"):
        module(x.tolist())
    with pytest.raises(archfit.InputError, match=r"called with 1 input\(s\) in another structure"):
        module(x=x)


def test_a_model_compiled_whole_calls_its_engine_by_name_without_the_host_graph(mlp, saved_mlp, tmp_path):
    """The sole-engine path: found for one engine fed every input, not for a host op between
    engines; the engine is looked up by name per call (auto and per_partition swap engines)."""
    from archfit.core.engines import EngineModule

    model, (x,) = mlp
    module = archfit.trace(model, (x,), "openvino", check_payoff=False, validate=False)
    assert module._sole_engine == "target_0"
    assert archfit.load(saved_mlp)._sole_engine is None  # two engines, the custom op between them on the host
    torch.testing.assert_close(module(x), model(x), atol=1e-4, rtol=1e-4)
    loaded = archfit.load(archfit.save(module, tmp_path / "whole.archfit"))  # the loaded host program too
    assert loaded._sole_engine == "target_0" and torch.equal(loaded(x), module(x))

    class Zeros:
        def run(self, inputs):
            return [torch.zeros(4, 32)]

    setattr(module.graph_module, "target_0", EngineModule(Zeros(), 0, "openvino", [torch.float32]))
    assert torch.equal(module(x), torch.zeros(4, 32))


def test_inputs_in_any_layout_give_the_contiguous_answer():
    """Strided (an image permuted from HWC), sliced and expanded tensors, as users make them: the
    engine sees one contiguous copy (made by numpy, targets/base.to_numpy) and answers the same."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.randn(1, 3, 8, 8)
    compiled = archfit.trace(model, (x,), "onnxruntime", check_payoff=False)
    hwc = x[0].permute(1, 2, 0).contiguous()
    layouts = {"strided": hwc.permute(2, 0, 1)[None], "sliced": torch.randn(1, 3, 8, 16)[..., ::2],
               "expanded": torch.randn(1, 1, 8, 8).expand(1, 3, 8, 8)}
    with torch.no_grad():
        for name, t in layouts.items():
            assert not t.is_contiguous()
            torch.testing.assert_close(compiled(t), compiled(t.contiguous()), atol=0, rtol=0, msg=name)
