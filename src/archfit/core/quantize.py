"""int8: the target partitions quantized after training by the target's own quantizer (NNCF for
OpenVINO, ONNX Runtime's quantize_static), calibrated on the user's inputs, and accuracy
control when the result misses its task gate on the validation set.

Accuracy control, for every target through its own partitions (NNCF's
quantize_with_accuracy_control does it for OpenVINO models only): each quantized layer's own
contribution to the error is measured on the validation set, in eager PyTorch with that layer
alone fake-quantized as the quantizers quantize it (activations per tensor from the calibration
ranges, weights per output channel); then the most sensitive layers go back to float a group at a
time (1, 2, 4, ... layers) until the gate passes, and a long passing set is narrowed block by block
on the compiled engine. Measured, not guessed from layer types: the layer that hurts is the one
whose activations have outliers on this model's data."""
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
# ops the quantizers give int8 inputs without a weight: a residual add or product of two activations,
# pooling. On EfficientNet-Lite0 all 50 convolutions in float left int8's top-1 agreement where it
# was (benchmarks/quantization_image.py), so accuracy control ranks these beside the layers.
MERGES = {aten.add, aten.mul}
POOLS = {aten.adaptive_avg_pool2d, aten.avg_pool2d, aten.mean}
# A passing float set this long is narrowed block by block on the compiled engine (control_accuracy's
# narrow), in at most this many more compiles.
NARROW_FROM = 8
NARROW_ATTEMPTS = 8


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


def _activation_inputs(node: fx.Node) -> list[int]:
    """The argument positions of a weightless op the quantizers quantize (none for other ops)."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return []
    tensors = [i for i, a in enumerate(node.args) if isinstance(a, fx.Node)
               and isinstance(a.meta.get("val"), torch.Tensor) and a.meta["val"].dtype.is_floating_point]
    packet = node.target.overloadpacket
    if packet in MERGES:
        return tensors if len(tensors) == 2 else []
    return tensors[:1] if packet in POOLS else []


def candidates_in(gm: fx.GraphModule, names: set[str]) -> list[str]:
    """What accuracy control may return to float: the weight layers and the weightless ops the
    quantizers quantize, among `names`, in graph order."""
    return [n.name for n in gm.graph.nodes if n.name in names and (is_layer(n) or _activation_inputs(n))]


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

    def forward(self, name: str, x: torch.Tensor, w: torch.Tensor | None, input_name: str | None = None):
        key = input_name or name  # a weightless op's inputs have a range each
        if self.record:
            low, high = float(x.min()), float(x.max())
            held = self.ranges.get(key, (low, high))
            self.ranges[key] = (min(held[0], low), max(held[1], high))
        if name != self.active:
            return x, w
        if w is not None and name not in self.weights:
            self.weights[name] = _fake_quant_weight(w)
        return _fake_quant_activation(x, *self.ranges[key]), self.weights.get(name)


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
        if not is_layer(node):  # a weightless op: each quantized input through the probe
            args = list(node.args)
            with out.graph.inserting_before(node):
                for i in _activation_inputs(node):
                    pair = out.graph.call_module("archfit_probe", (node.name, args[i], None, f"{node.name}#{i}"))
                    args[i] = out.graph.call_function(_getitem, (pair, 0))
            node.args = tuple(args)
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
    layers and weightless quantized ops (residual adds, pooling) return to float a group at a time.
    attempt(float_layers, float_precision) -> (compiled, validation); time_ms(compiled) -> its
    median ms a call (what keeping them costs). A passing set of NARROW_FROM ops or more is
    narrowed on the compiled engine (narrow). Float is the target's default (OpenVINO: bf16 where
    the CPU has bf16 units) when every op of the partitions in it passes; else fp32 (a model whose
    bf16 misses the gate). Every op in float is the last resort; refused, naming the best metric
    reached, when every op in fp32 misses too."""
    from ..errors import ValidationError
    from .sets import input_sets

    on_target = {name for p in compiled.plan.partitions for name in p.nodes}
    layers = layers_in(captured.graph_module, on_target)
    calibration = input_sets(options.calibration, captured.in_spec, "calibration")
    said = f"{len(calibration)} input set(s) (digest {digest(calibration)})"
    candidates = candidates_in(captured.graph_module, on_target)
    kept = tuple(name for name in options.float_layers if name in candidates)
    if validation is None or validation.ok or not options.accuracy_control:
        return compiled, validation, Quantization(said, len(set(layers) - set(kept)), kept)
    validation_sets = input_sets(options.validation_inputs, captured.in_spec, "validation_inputs")
    options.say("int8 missed its gate: measuring each layer's share of the error on the validation set")
    ranked = [n for n, _ in sensitivity(captured.graph_module, [n for n in candidates if n not in kept], calibration,
                                        validation_sets)]
    every_op = tuple(n.name for n in captured.graph_module.graph.nodes if n.name in on_target)
    first_ms = time_ms(compiled)
    steps = [f"accuracy control: every layer in int8 ({first_ms:.3f} ms a call): {_deciding(validation)}: FAIL"]

    def tried(group: tuple[str, ...], float_precision: str | None, label: str | None = None):
        every = group == every_op
        label = label or ("every op of the partitions" if every else f"the {len(group)} most sensitive")
        named = f"({len(group)})" if every else f"({', '.join(group[:6])}{', ...' if len(group) > 6 else ''})"
        precision = f", {float_precision}" if float_precision else ""
        options.say(f"int8 with {label} in float{precision}")
        made, judged = attempt(group if every else kept + group, float_precision)
        ms = time_ms(made)
        steps.append(f"  {label} in float {named}{precision}: {ms:.3f} ms a call, {ms / first_ms - 1:+.1%}: "
                     f"{_deciding(judged)}: {'PASS' if judged.ok else 'FAIL'}")
        return group, made, judged

    def search(float_precision: str | None):
        """The fewest most-sensitive layers in float that pass, or None."""
        for group in groups(ranked):
            found = tried(group, float_precision)
            if found[2].ok:
                return found
        return None

    def narrow(found, float_precision: str | None):
        """`found` (a passing float set) with blocks of it returned to int8 while the gate still
        passes, the least sensitive blocks first, each block checked on the compiled engine (the
        ranking measures one op at a time in PyTorch, and where the error is spread over many ops
        the passing prefix is long: EfficientNet-Lite0 failed with 32 of 60 in float and passed
        with 60). Blocks of a quarter of the set, then an eighth, at most NARROW_ATTEMPTS compiles."""
        floats, attempts = list(found[0]), 0
        size = max(1, len(floats) // 4)
        while size >= 1 and attempts < NARROW_ATTEMPTS:
            snapshot = list(floats)
            for start in reversed(range(0, len(snapshot), size)):
                block = [name for name in snapshot[start:start + size] if name in floats]
                if not block or len(block) == len(floats) or attempts == NARROW_ATTEMPTS:
                    continue
                attempts += 1
                trial = tuple(name for name in floats if name not in block)
                got = tried(trial, float_precision, f"{len(trial)} ops ({len(block)} fewer)")
                if got[2].ok:
                    floats, found = list(trial), got
            size //= 2
        return found

    # every op in the float asked for (the target's default unless set) first: where that misses (bf16
    # on a model it does not suit), no group in it can pass, and the groups are searched in fp32
    float_precision = options.float_precision
    last = tried(every_op, float_precision)
    if not last[2].ok and float_precision != "fp32":
        last, float_precision = tried(every_op, "fp32"), "fp32"
    if not last[2].ok:
        raise ValidationError(f"int8 misses the {options.accuracy.describe()} gate on the validation set even with "
                              f"every op in fp32 (best: {_deciding(last[2])}); use precision='bf16' or 'fp32', "
                              f"or loosen the gate's bounds if the task allows")
    found = search(float_precision)
    if found is not None and len(found[0]) >= NARROW_FROM:
        found = narrow(found, float_precision)
    group, compiled, validation = found or last
    final = {name for p in compiled.plan.partitions for name in p.nodes}
    final_layers = layers_in(captured.graph_module, final)
    floats = tuple(name for name in (candidates_in(captured.graph_module, final) if group == every_op else kept + group)
                   if name in final)
    return compiled, validation, Quantization(said, len(set(final_layers) - set(floats)), floats, tuple(steps))

