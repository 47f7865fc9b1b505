"""bf16 emulation pass: matmul/conv see bf16-rounded inputs and produce a bf16-rounded output."""
import torch

from archfit.core.capture import capture
from archfit.targets.precision import emulate_bf16


class TwoLinears(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(32, 32)
        self.b = torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _rounded(t):
    return t.to(torch.bfloat16).to(torch.float32)


def test_emulated_bf16_equals_explicit_rounding():
    torch.manual_seed(0)
    model, x = TwoLinears().eval(), torch.randn(4, 32)
    gm = emulate_bf16(capture(model, (x,)).graph_module)
    with torch.no_grad():
        h = _rounded(torch.nn.functional.linear(_rounded(x), _rounded(model.a.weight), _rounded(model.a.bias)))
        want = _rounded(torch.nn.functional.linear(_rounded(torch.relu(h)), _rounded(model.b.weight), _rounded(model.b.bias)))
        got = gm(x)[0]
        exact = model(x)
    assert torch.equal(got, want)
    assert not torch.equal(got, exact)  # the pass changes numerics, as bf16 does
