"""What `archfit.trace` is asked for, as one object handed down whole to every stage and every
graph it compiles (the whole model, each bucket, each region), as Torch-TensorRT passes its one
CompilationSettings: no stage takes the options as loose arguments."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ArchfitError
from ..targets.base import LOSSY, PRECISIONS, Target
from ..targets.registry import get_target
from .accuracy import Accuracy, accuracy_gate

if TYPE_CHECKING:
    from ..shapes import Buckets, Packing


@dataclass(frozen=True)
class TraceOptions:
    """Everything `archfit.trace` takes besides the model and its example inputs:
    `archfit.trace(model, inputs, options=TraceOptions(...))`, or the same names as keywords
    (README, *Python API*, has what each does)."""

    target: str | Target = "openvino"  # a registered name, a Target, or "auto"
    precision: str | None = None  # None: the target's default; "fp32", "bf16" or "auto"
    force_cpu: tuple[str, ...] = ()  # op names ('aten.gelu', 'gelu') or node names to keep in PyTorch
    require_full: bool = False
    min_partition_size: int | None = None  # None: the target's
    check_payoff: bool = True
    validate: bool = True
    validation_inputs: Any = None  # more inputs to validate on, structured like the example inputs
    accuracy: str | Accuracy | None = None  # a task gate deciding validation (core/accuracy.py)
    per_partition: bool = False  # each partition on the real target the whole model measures fastest with
    cache: bool = True
    progress: Callable[[str], None] | None = None  # takes one-line status messages
    name: str | None = None  # the model's name in reports (default: its class)
    buckets: Buckets | None = None
    dynamic_batch: bool = False
    # with dynamic_batch: smaller row counts compiled too, a partial batch run on the smallest that holds it
    batch_sizes: tuple[int, ...] = ()
    check_padding: bool = True
    packing: Packing | None = None
    # int8: input sets to calibrate on (like validation_inputs), layers (graph node names) kept in
    # float, and whether accuracy control returns the most sensitive layers to float when the
    # gate misses
    calibration: Any = None
    float_layers: tuple[str, ...] = ()
    accuracy_control: bool = True
    # the precision int8's float layers run in: None is the target's default (OpenVINO: bf16 where the
    # CPU has bf16 units); accuracy control asks for "fp32" when the default cannot pass the gate
    float_precision: str | None = None
    # validation measured and reported but not deciding: a detector's regions under a whole-model task
    # gate (their outputs are raw box offsets and logits, where bf16's elementwise error says little)
    report_only: bool = False
    # a Hugging Face / sentence-transformers directory: its task (Optimum's names; default from its
    # config), the tokens of the example inputs its tokenizer makes (default 128) and their rows
    # (default 1; with dynamic_batch, the rows of one engine call)
    task: str | None = None
    length: int | None = None
    batch: int | None = None

    @classmethod
    def of(cls, options: "TraceOptions | None" = None, **keywords) -> "TraceOptions":
        """`options` with `keywords` set on it (or the defaults with them); an unknown name is
        refused naming the ones there are."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(keywords) - names)
        if unknown:
            raise TypeError(f"trace() got an unexpected option {unknown[0]!r}; the options are "
                            f"{', '.join(sorted(names))}")
        if "force_cpu" in keywords:
            keywords["force_cpu"] = tuple(keywords["force_cpu"])
        made = dataclasses.replace(options or cls(), **keywords)
        return dataclasses.replace(made, validation_inputs=_held(made.validation_inputs),
                                   calibration=_held(made.calibration))

    def resolved(self) -> "TraceOptions":
        """The target as a Target, the precision as one it computes in here, the gate as an
        Accuracy: what the stages below trace read (target and precision "auto" are decided above them)."""
        target = get_target(self.target)
        resolved = dataclasses.replace(self, target=target, precision=resolve_precision(target, self.precision),
                                       accuracy=accuracy_gate(self.accuracy), force_cpu=tuple(self.force_cpu),
                                       float_layers=tuple(self.float_layers))
        resolved.check_lossy()
        return resolved

    def check_lossy(self) -> None:
        """int8 and fp8 ship only after a task gate passes on a validation set; int8 is
        calibrated on the user's inputs: each missing piece refused in one line."""
        if self.precision not in LOSSY or not self.validate:
            if self.precision == "int8" and self.calibration is None:
                raise ArchfitError(_NO_CALIBRATION)
            return
        if self.precision == "int8" and self.calibration is None:
            raise ArchfitError(_NO_CALIBRATION)
        if self.accuracy is None or self.validation_inputs is None:
            raise ArchfitError(f"precision={self.precision!r} is shipped only after passing a task gate on a "
                               f"validation set: pass accuracy= ('classification', 'embedding', 'detection' or "
                               f"'tokens') and validation_inputs= (input sets held apart from the calibration "
                               f"data; CLI --accuracy and --validation)")

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)


def _held(sets: Any) -> Any:
    """Input sets given as any iterable (a generator, a DataLoader), read once into a list: trace
    reads them more than once (every candidate of target="auto", every attempt of accuracy
    control), and a generator runs dry after the first."""
    import torch

    if sets is None or isinstance(sets, (torch.Tensor, dict, tuple, list)) or not hasattr(sets, "__iter__"):
        return sets
    return list(sets)


_NO_CALIBRATION = ("precision='int8' is calibrated on inputs like those it will see: pass calibration= (an input set "
                   "like the example inputs, or a list, DataLoader or generator of them; a few hundred make a "
                   "good calibration; CLI --calibration FILE.npz|DIR)")


def resolve_precision(target: Target, precision: str | None) -> str:
    precision = precision or target.default_precision
    if precision not in PRECISIONS or precision not in target.precisions:
        raise ArchfitError(f"precision {precision!r} is not offered by target {target.name!r}; "
                           f"choose one of {', '.join(target.precisions)}")
    why = target.precision_unavailable(precision)
    if why is not None:
        raise ArchfitError(f"precision {precision!r} on target {target.name!r}: {why}")
    return precision
