"""Task accuracy gates: validation by what the task needs, besides elementwise closeness.

Elementwise tolerance is the right test for fp32, and the wrong one for a bf16 detector: rounding
moves a box's score across the threshold or reorders two overlapping boxes in NMS, and the
outputs then differ in length or order while every detection a user would act on is the same.
`trace(..., accuracy=...)` takes one of the gates below (or its name); the compiled model then
passes or fails on the measured metric, which the report prints beside the elementwise error.

Every gate compares the compiled model's outputs with eager PyTorch's on the same inputs (the
example, a fresh random input, and a validation set), from the output structure the model
returns (before flattening), so a gate finds its tensors by what they are: torchvision-style
detection dicts, [N, 6] box tensors, logits, embeddings, token ids. On a validation set a gate
measures as users do, over every input of the set (MLPerf: the share of the set the compiled
model agrees on), and names the inputs that scored worst."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import torch
from torch.utils import _pytree as pytree

from ..errors import ValidationError


@dataclass(frozen=True)
class MetricCheck:
    """One gate measured on one set of inputs: each metric's value and the minimum it needs."""

    gate: str  # "detection"
    label: str  # "example inputs" / "random inputs" / "validation set" ...
    values: tuple[tuple[str, float], ...]  # (metric, measured)
    bounds: tuple[tuple[str, float], ...]  # (metric, minimum; 0: reported, not gated)
    size: int = 1  # inputs measured
    worst: tuple[tuple[int, float], ...] = ()  # (input index, its score), the lowest first

    @property
    def ok(self) -> bool:
        return all(v >= b for (_, v), (_, b) in zip(self.values, self.bounds))

    def describe(self) -> str:
        said = ", ".join(f"{k} {v:.6g} " + (f"{'>=' if v >= b else '<'} {b:g}" if b else "(not gated)")
                         for (k, v), (_, b) in zip(self.values, self.bounds))
        if self.size > 1:
            said += f" over {self.size} inputs"
            if self.worst:
                said += "; worst inputs " + ", ".join(f"#{i} ({v:.4g})" for i, v in self.worst)
        return said

    def shortfall(self) -> str:
        """The metric furthest under its bound, said with by how much."""
        k, v, b = min(((k, v, b) for (k, v), (_, b) in zip(self.values, self.bounds)), key=lambda t: t[1] - t[2])
        return f"{k} {v:.6g} < {b:g} (short by {b - v:.2g})"


class Accuracy:
    """A task gate: `measure_set(pairs)` -> ({metric: value over the set}, a score per input);
    passes when each value >= its bound. The bounds are the dataclass fields whose names
    `metrics` lists (a bound of 0 reports the metric without gating on it)."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]

    def measure_set(self, pairs: list[tuple[Any, Any]]) -> tuple[dict[str, float], list[float]]:
        """Over (compiled outputs, eager outputs) of every input: the metrics, and each input's
        own score (lower is worse) to name the worst inputs."""
        raise NotImplementedError

    def measure(self, got: Any, want: Any) -> dict[str, float]:
        return self.measure_set([(got, want)])[0]

    def describe(self) -> str:
        return f"{self.name} ({', '.join(f'{f.name}={getattr(self, f.name):g}' for f in fields(self))})"

    def hint(self, got: Any, want: Any) -> str:
        """After a failed check: a measured way the gate would pass that the task may allow, or ''."""
        return ""

    def check(self, got: Any, want: Any, label: str) -> MetricCheck:
        return self.check_set([(got, want)], label)

    def check_set(self, pairs: list[tuple[Any, Any]], label: str, worst: int = 3) -> MetricCheck:
        values, scores = self.measure_set(pairs)
        lowest = sorted(range(len(scores)), key=lambda i: scores[i])[:worst] if len(scores) > 1 else []
        return MetricCheck(self.name, label, tuple((k, float(values[k])) for k in self.metrics),
                           tuple((k, float(getattr(self, k))) for k in self.metrics), len(pairs),
                           tuple((i, float(scores[i])) for i in lowest))


def _floats(out: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.dtype.is_floating_point]


def _need(found: list, gate: str, wanted: str) -> list:
    if not found:
        raise ValidationError(f"accuracy={gate!r} needs {wanted} among the model's outputs and found none; choose "
                              f"the gate that fits what the model returns, or leave accuracy unset")
    return found


@dataclass(frozen=True)
class Classification(Accuracy):
    """Logits over classes (last dim): the compiled top-1 class equals eager's on >= top1 of
    the rows (over the whole set); the share of eager's top-5 in the compiled top-5 is reported,
    and gated only when asked (top5=0.99): one class swapped at rank 5 is not a wrong answer."""

    top1: float = 0.99
    top5: float = 0.0
    name: ClassVar[str] = "classification"
    metrics: ClassVar[tuple[str, ...]] = ("top1", "top5")

    def measure_set(self, pairs):
        agree, overlap, scores = [], [], []
        for got, want in pairs:
            found = [(g, w) for g, w in zip(_floats(got), _floats(want)) if w.dim() >= 1 and w.shape[-1] >= 2]
            g, w = _need(found, self.name, "a logits output (classes in the last dim)")[0]
            g, w = g.reshape(-1, w.shape[-1]).float(), w.reshape(-1, w.shape[-1]).float()
            k = min(5, w.shape[-1])
            top_g, top_w = g.topk(k, dim=-1).indices, w.topk(k, dim=-1).indices
            agree.append((top_g[:, 0] == top_w[:, 0]).float())
            overlap.append((top_g.unsqueeze(-1) == top_w.unsqueeze(-2)).any(-1).float().mean(-1))
            scores.append(float(agree[-1].mean()))
        return {"top1": float(torch.cat(agree).mean()), "top5": float(torch.cat(overlap).mean())}, scores


@dataclass(frozen=True)
class Embedding(Accuracy):
    """Every vector (last dim) of every floating output, over the set: the worst cosine similarity
    with eager's >= cosine, and the mean >= mean_cosine."""

    cosine: float = 0.97
    mean_cosine: float = 0.99
    name: ClassVar[str] = "embedding"
    metrics: ClassVar[tuple[str, ...]] = ("cosine", "mean_cosine")

    def measure_set(self, pairs):
        every, scores = [], []
        for got, want in pairs:
            found = _need([(g, w) for g, w in zip(_floats(got), _floats(want)) if w.dim() >= 1], self.name,
                          "a floating-point output")
            mine = []
            for g, w in found:
                g, w = g.reshape(-1, w.shape[-1]).double(), w.reshape(-1, w.shape[-1]).double()
                zero = (g.norm(dim=-1) == 0) & (w.norm(dim=-1) == 0)  # both zero (padding rows): the same vector
                mine.append(torch.nn.functional.cosine_similarity(g, w, dim=-1).masked_fill(zero, 1.0))
            cos = torch.cat(mine)
            every.append(cos)
            scores.append(float(cos.min()) if cos.numel() else 1.0)
        cos = torch.cat(every)
        if not cos.numel():
            return {"cosine": 1.0, "mean_cosine": 1.0}, scores
        return {"cosine": float(cos.min()), "mean_cosine": float(cos.mean())}, scores


@dataclass(frozen=True)
class Tokens(Accuracy):
    """Token ids (integer outputs), or the tokens greedy decoding would pick (argmax of the first
    floating output's last dim): the share of positions where compiled and eager agree."""

    agreement: float = 0.99
    name: ClassVar[str] = "tokens"
    metrics: ClassVar[tuple[str, ...]] = ("agreement",)

    def measure_set(self, pairs):
        def ids(out):
            flat = [t for t in pytree.tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            ints = [t for t in flat if not t.dtype.is_floating_point and t.dtype != torch.bool]
            return ints or [t.argmax(-1) for t in _need(_floats(out), self.name, "token ids or logits")[:1]]

        same = total = 0
        scores = []
        for got, want in pairs:
            mine = theirs = 0
            for g, w in zip(ids(got), ids(want)):
                if g.shape != w.shape:  # a different length: positions past the shorter one disagree
                    n = min(g.numel(), w.numel())
                    mine += int((g.flatten()[:n] == w.flatten()[:n]).sum())
                    theirs += max(g.numel(), w.numel())
                else:
                    mine, theirs = mine + int((g == w).sum()), theirs + w.numel()
            same, total = same + mine, total + theirs
            scores.append(mine / theirs if theirs else 1.0)
        return {"agreement": same / total if total else 1.0}, scores


@dataclass(frozen=True)
class Detection(Accuracy):
    """Detections (torchvision's dicts of boxes/scores/labels per image, or [N, 6] tensors of
    x1, y1, x2, y2, score, label): each eager detection scoring >= score_threshold matched to one
    compiled detection of the same label with IoU >= iou (greedily, highest score first);
    recall = matched / eager's detections, precision = matched / compiled detections."""

    iou: float = 0.9
    recall: float = 0.99
    precision: float = 0.99
    score_threshold: float = 0.0
    name: ClassVar[str] = "detection"
    metrics: ClassVar[tuple[str, ...]] = ("recall", "precision")

    def measure_set(self, pairs):
        totals, scores = [0, 0, 0], []
        for got, want in pairs:
            matched, n_got, n_want = self._matches(got, want)
            totals = [totals[0] + matched, totals[1] + n_got, totals[2] + n_want]
            scores.append(min(matched / n_want if n_want else 1.0, matched / n_got if n_got else 1.0))
        matched, n_got, n_want = totals
        return {"recall": matched / n_want if n_want else 1.0, "precision": matched / n_got if n_got else 1.0}, scores

    def _matches(self, got, want) -> tuple[int, int, int]:
        """(matched, compiled detections, eager detections) of one input's outputs."""
        from torchvision.ops import box_iou

        matched = n_got = n_want = 0
        for (gb, gs, gl), (wb, ws, wl) in zip(self._images(got), self._images(want)):
            keep_g, keep_w = gs >= self.score_threshold, ws >= self.score_threshold
            gb, gl, wb, wl, ws = gb[keep_g], gl[keep_g], wb[keep_w], wl[keep_w], ws[keep_w]
            n_got, n_want = n_got + len(gb), n_want + len(wb)
            if not len(gb) or not len(wb):
                continue
            iou = box_iou(wb.float(), gb.float())
            iou[wl.unsqueeze(1) != gl.unsqueeze(0)] = 0.0  # another label never matches
            free = torch.ones(len(gb), dtype=torch.bool)
            for i in ws.argsort(descending=True).tolist():
                cand = iou[i].masked_fill(~free, -1.0)
                j = int(cand.argmax())
                if float(cand[j]) >= self.iou:
                    free[j] = False
                    matched += 1
        return matched, n_got, n_want

    def hint(self, got, want) -> str:
        """The lowest score above which the gate passes, when raising score_threshold makes it pass:
        a detector that keeps every box down to an evaluation threshold (torchvision's SSD: 0.01)
        ends in a tail of near-equal low scores that reduced precision reorders, while the boxes a
        deployment acts on may all match."""
        scores = torch.cat([s.float() for _, s, _ in self._images(want)])
        above = sorted({float(x) for x in scores if x > self.score_threshold})
        step = max(1, len(above) // 50)  # at most ~50 candidate thresholds: the hint, not a search
        for t in above[::step]:
            t = float(f"{t:.3g}")  # the value the hint prints is the one checked
            if replace(self, score_threshold=t).check(got, want, "").ok:
                return (f" (it passes on the boxes scoring >= {t:g}: accuracy='{self.name}:score_threshold={t:g}', "
                        f"if the task acts only on those)")
        return ""

    def _images(self, out) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        found = []

        def walk(x):
            if isinstance(x, dict) and "boxes" in x and "scores" in x:
                labels = x.get("labels", torch.zeros(len(x["scores"]), dtype=torch.long))
                found.append((x["boxes"], x["scores"], labels))
            elif isinstance(x, dict):
                for v in x.values():
                    walk(v)
            elif isinstance(x, (list, tuple)):
                for v in x:
                    walk(v)
            elif isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[-1] == 6 and x.dtype.is_floating_point:
                for rows in x.reshape(-1, *x.shape[-2:]):
                    found.append((rows[:, :4], rows[:, 4], rows[:, 5].round().long()))

        walk(out)
        return _need(found, self.name, "detections (dicts with boxes/scores/labels, or [N, 6] box tensors)")


GATES: dict[str, type[Accuracy]] = {g.name: g for g in (Classification, Embedding, Tokens, Detection)}


def accuracy_gate(spec: "str | Accuracy | None") -> Accuracy | None:
    """None, a gate, a gate's name, or 'name:key=value,...' (the CLI's form) -> the gate."""
    from ..errors import ArchfitError

    if spec is None or isinstance(spec, Accuracy):
        return spec
    name, _, rest = str(spec).partition(":")
    if name not in GATES:
        raise ArchfitError(f"accuracy={spec!r}: no such gate; choose one of {', '.join(GATES)} "
                           f"(e.g. 'detection' or 'detection:recall=0.98,iou=0.85')")
    gate, known = GATES[name], {f.name for f in fields(GATES[name])}
    try:
        values = {k.strip(): float(v) for k, v in (kv.split("=", 1) for kv in rest.split(",") if kv.strip())}
    except ValueError:
        raise ArchfitError(f"accuracy={spec!r}: bounds are key=number pairs separated by commas, e.g. "
                           f"'{name}:{next(iter(sorted(known)))}=0.99'") from None
    unknown = set(values) - known
    if unknown:
        raise ArchfitError(f"accuracy={spec!r}: {name} has no bound {', '.join(sorted(unknown))}; "
                           f"it takes {', '.join(sorted(known))}")
    return gate(**values)


__all__ = ["Accuracy", "Classification", "Detection", "Embedding", "GATES", "MetricCheck", "Tokens", "accuracy_gate"]
