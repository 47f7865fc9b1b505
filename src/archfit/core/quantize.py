"""int8: the target partitions quantized after training by the target's own quantizer (NNCF for
OpenVINO, ONNX Runtime's quantize_static), calibrated on the user's inputs, and accuracy
control when the result misses its task gate on the validation set.

Accuracy control, for every target through its own partitions (NNCF's
quantize_with_accuracy_control does it for OpenVINO models only): each quantized layer's own
contribution to the error is measured on the validation set, in eager PyTorch with that layer
alone fake-quantized as the quantizers quantize it (activations per tensor from the calibration
ranges, weights per output channel); then the most sensitive layers go back to float a group at a
time (1, 2, 4, ... layers) until the gate passes. Measured, not guessed from layer types: the
layer that hurts is the one whose activations have outliers on this model's data."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import fx

aten = torch.ops.aten
# layers with a weight, as the quantizers see them (attention's activation-by-activation matmuls
# are the quantizer's own choice, not a layer to return)
LAYERS = {aten.linear, aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution, aten._convolution, aten.addmm, aten.mm}


@dataclass(frozen=True)
class Quantization:
    """What decided an int8 module, for its report and file: the sets it was calibrated and
    judged on, the layers quantized, and those accuracy control returned to float."""

    calibration: str  # "N input sets, digest ..."
    layers: int  # layers quantized (weights in int8)
    float_layers: tuple[str, ...] = ()  # returned to float by accuracy control (or asked for)
    steps: tuple[str, ...] = ()  # what accuracy control tried, a line each

    def lines(self) -> list[str]:
        kept = (f"; kept in float: {', '.join(self.float_layers)}" if self.float_layers else "")
        none = (" (no partition runs on the target: those compiled did not pay off, and the model runs in "
                "PyTorch)" if not self.layers and not self.float_layers else "")
        return [f"int8: {self.layers} layer(s) quantized{none}, calibrated on {self.calibration}{kept}", *self.steps]


def digest(sets: Sequence[Sequence[torch.Tensor]]) -> str:
    """A short digest of input sets: names the calibration data in reports and cache keys."""
    h = hashlib.blake2b(digest_size=8)
    for flat in sets:
        for t in flat:
            t = t.detach().contiguous()
            h.update(repr((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def is_layer(node: fx.Node) -> bool:
    return (node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
            and node.target.overloadpacket in LAYERS and len(node.args) > 1 and isinstance(node.args[1], fx.Node)
            and node.args[1].op == "get_attr")


def layers_in(gm: fx.GraphModule, names: set[str] | None = None) -> list[str]:
    """The weight layers of a graph (those named in `names`, when given), in graph order."""
    return [n.name for n in gm.graph.nodes if is_layer(n) and (names is None or n.name in names)]


def _fake_quant_activation(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    low, high = min(low, 0.0), max(high, 0.0)  # zero stays exact, as the quantizers keep it
    scale = max((high - low) / 255.0, 1e-12)
    zero = int(round(-low / scale))
    return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, 0, 255).to(x.dtype)


def _fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    flat = w.detach().float().reshape(w.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    zero = torch.zeros(w.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w.float(), scale, zero, 0, -128, 127).to(w.dtype)


class _Probe(torch.nn.Module):
    """Called by every probed layer: records activation ranges, fake-quantizes the active layer."""

    def __init__(self):
        super().__init__()
        self.active: str | None = None
        self.record = False
        self.ranges: dict[str, tuple[float, float]] = {}
        self.weights: dict[str, torch.Tensor] = {}

    def forward(self, name: str, x: torch.Tensor, w: torch.Tensor):
        if self.record:
            low, high = float(x.min()), float(x.max())
            held = self.ranges.get(name, (low, high))
            self.ranges[name] = (min(held[0], low), max(held[1], high))
        if name != self.active:
            return x, w
        if name not in self.weights:
            self.weights[name] = _fake_quant_weight(w)
        return _fake_quant_activation(x, *self.ranges[name]), self.weights[name]


def _probed(gm: fx.GraphModule, layers: Sequence[str]) -> tuple[fx.GraphModule, _Probe]:
    """A copy of `gm` whose layers hand their activation and weight through a probe first."""
    import copy

    probe = _Probe()
    out = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    out.add_module("archfit_probe", probe)
    wanted = set(layers)
    for node in list(out.graph.nodes):
        if node.name not in wanted:
            continue
        with out.graph.inserting_before(node):
            pair = out.graph.call_module("archfit_probe", (node.name, node.args[0], node.args[1]))
            x = out.graph.call_function(_getitem, (pair, 0))
            w = out.graph.call_function(_getitem, (pair, 1))
        node.args = (x, w, *node.args[2:])
    out.recompile()
    return out, probe


def _getitem(pair, i):
    return pair[i]


def _floats(out) -> torch.Tensor:
    from torch.utils import _pytree as pytree

    leaves = [t.detach().double().reshape(-1) for t in pytree.tree_flatten(out)[0]
              if isinstance(t, torch.Tensor) and t.dtype.is_floating_point]
    return torch.cat(leaves) if leaves else torch.zeros(1, dtype=torch.float64)


def sensitivity(gm: fx.GraphModule, layers: Sequence[str], calibration: Sequence[Sequence[torch.Tensor]],
                validation: Sequence[Sequence[torch.Tensor]], most: int = 32) -> list[tuple[str, float]]:
    """(layer, error) with only that layer fake-quantized, the most sensitive first: the error is
    1 - cosine similarity of the model's floating outputs with fp32's, averaged over (up to
    `most` of) the validation inputs."""
    probed, probe = _probed(gm, layers)
    sample = list(validation)[:most]
    with torch.no_grad():
        probe.record = True
        for flat in calibration:
            probed(*flat)
        probe.record = False
        reference = [_floats(probed(*flat)) for flat in sample]
        errors = []
        for name in layers:
            probe.active = name
            err = [1.0 - float(torch.nn.functional.cosine_similarity(_floats(probed(*flat)), ref, dim=0))
                   for flat, ref in zip(sample, reference)]
            errors.append((name, sum(err) / len(err)))
        probe.active = None
    return sorted(errors, key=lambda e: -e[1])


def groups(ranked: Sequence[str]) -> list[tuple[str, ...]]:
    """The float sets accuracy control tries: the 1, 2, 4, ... most sensitive layers, then all."""
    out, k = [], 1
    while k < len(ranked):
        out.append(tuple(ranked[:k]))
        k *= 2
    return out + [tuple(ranked)]


def _deciding(validation) -> str:
    """What the gate measured on the validation set, in words."""
    metric = next((m for m in validation.metrics if m.label == "validation set"), None)
    return metric.describe() if metric is not None else ("PASS" if validation.ok else "FAIL")


def control_accuracy(captured, compiled, validation, options, attempt, time_ms) -> tuple[object, object, Quantization]:
    """An int8 graph that misses its gate on the validation set, made to pass: the most sensitive
    layers return to float a group at a time. attempt(float_layers) -> (compiled, validation) with
    those layers left float; time_ms(compiled) -> its median ms a call (what keeping them costs).
    Refused, naming the best metric reached, when even every layer in float misses."""
    from ..errors import ValidationError
    from .sets import input_sets

    on_target = {name for p in compiled.plan.partitions for name in p.nodes}
    layers = layers_in(captured.graph_module, on_target)
    calibration = input_sets(options.calibration, captured.in_spec, "calibration")
    said = f"{len(calibration)} input set(s) (digest {digest(calibration)})"
    kept = tuple(name for name in options.float_layers if name in layers)
    if validation is None or validation.ok or not options.accuracy_control:
        return compiled, validation, Quantization(said, len(layers) - len(kept), kept)
    validation_sets = input_sets(options.validation_inputs, captured.in_spec, "validation_inputs")
    options.say("int8 missed its gate: measuring each layer's share of the error on the validation set")
    ranked = [n for n, _ in sensitivity(captured.graph_module, [n for n in layers if n not in kept], calibration,
                                        validation_sets)]
    first_ms = time_ms(compiled)
    steps = [f"accuracy control: every layer in int8 ({first_ms:.3f} ms a call): {_deciding(validation)}: FAIL"]
    for group in groups(ranked):
        options.say(f"int8 with the {len(group)} most sensitive layer(s) in float")
        compiled, validation = attempt(kept + group)
        ms = time_ms(compiled)
        steps.append(f"  the {len(group)} most sensitive in float ({', '.join(group[:6])}"
                     f"{', ...' if len(group) > 6 else ''}; {ms:.3f} ms a call, {ms / first_ms - 1:+.1%}): "
                     f"{_deciding(validation)}: {'PASS' if validation.ok else 'FAIL'}")
        if validation.ok:
            final = layers_in(captured.graph_module, {name for p in compiled.plan.partitions for name in p.nodes})
            floats = tuple(name for name in kept + group if name in final)
            return compiled, validation, Quantization(said, len(final) - len(floats), floats, tuple(steps))
    raise ValidationError(f"int8 misses the {options.accuracy.describe()} gate on the validation set even with "
                          f"every quantized layer in float (best: {_deciding(validation)}); use precision='bf16' "
                          f"or 'fp32', or loosen the gate's bounds if the task allows")
