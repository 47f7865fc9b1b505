"""Keypoint R-CNN (torchvision) compiled as regions and checked against eager under the detection
gate over several images: the model whose heads after RoI pooling take one row per proposal kept,
a count that follows the data.

    .venv/bin/python benchmarks/keypoint_rcnn.py [--images 8]

keypointrcnn_resnet50_fpn, random weights (no trained weights ship offline; the check is of
structure and agreement, not of accuracy), images resized to 320 px, `box_score_thresh=0` so a
random network still reports its 100 best boxes. Traced for openvino fp32 with
`accuracy="detection"` over two validation images; then every image is run through the compiled
model and eager PyTorch and matched by the gate (same label, IoU >= 0.9). Writes
benchmarks/results/keypoint-rcnn.json."""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

import archfit
from archfit.cli.bench import cpu_model

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main() -> None:
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.detection.keypointrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=320, max_size=320, box_score_thresh=0.0).eval()
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 320, 320, generator=g) for _ in range(args.images)]
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = archfit.trace(model, ([images[0]],), "openvino", precision="fp32", accuracy="detection",
                                 validation_inputs=[([im],) for im in images[1:3]])
        seconds = time.perf_counter() - t0
        gate = archfit.Detection()
        rows = []
        for i, im in enumerate(images):
            with torch.no_grad():
                want = model([im])
            got = compiled([im])
            metrics, _ = gate.measure_set([(got, want)])
            rows.append({"image": i, "detections": int(want[0]["boxes"].shape[0]), **metrics})
    fallbacks = [str(w.message) for w in caught if "runs it in PyTorch" in str(w.message)]
    plan = compiled.plan
    out = {"cpu": cpu_model(), "trace_seconds": seconds, "regions": list(plan.regions),
           "host": [(h.module, h.reason) for h in plan.host], "images": rows, "fallbacks": fallbacks}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "keypoint-rcnn.json").write_text(json.dumps(out, indent=1))
    print(f"Keypoint R-CNN, 320 px, random weights, {cpu_model()}; traced in {seconds:.0f} s")
    print(f"compiled regions: {', '.join(plan.regions)}")
    for h in plan.host:
        print(f"host: {h.module}: {h.reason}")
    print(f"regions run in PyTorch at another size: {len(fallbacks)}")
    print("\n| image | eager detections | recall | precision |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['image']} | {r['detections']} | {r['recall']:.3f} | {r['precision']:.3f} |")


if __name__ == "__main__":
    main()
