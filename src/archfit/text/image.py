"""Images in, answers out: the image processor and labels a compiled file carries when it was
compiled from an image-classification directory (its preprocessor_config.json: data, run by the
transformers class it names, never code from the directory), as the text front carries a
tokenizer. Images are files (paths), their bytes, PIL images or HWC uint8 arrays."""
from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from functools import cached_property
from types import SimpleNamespace
from typing import Any, Sequence

import torch

from ..errors import ArtifactError, InputError, ModelError
from .io import label_scores

MAX_PROCESSOR_BYTES = 1 << 20
MAX_IMAGE_BYTES = 64 << 20


@dataclass(frozen=True)
class Picture:
    """One image prepared: the processor's pixel_values (1, 3, H, W) and its own (height, width)."""

    pixels: torch.Tensor
    size: tuple[int, int]


@dataclass(frozen=True)
class ImageIO:
    task: str  # image-classification or object-detection
    processor: str  # preprocessor_config.json
    labels: tuple[str, ...]
    multi_label: bool = False
    threshold: float = 0.5  # object-detection: detections scored below it are left out (transformers' pipeline's)
    embedding = False  # the text front's field, for code that reads either front (serve/text.py)

    @property
    def answer_name(self) -> str:
        return "label" if self.task == "image-classification" else "detections"

    @cached_property
    def _processor(self):
        import transformers

        config = json.loads(self.processor)
        name = str(config.get("image_processor_type", ""))
        # only a class transformers itself defines, by the name the config gives: no code from the file
        cls = getattr(transformers, name, None) if name.endswith(("ImageProcessor", "ImageProcessorFast")) else None
        if cls is None:
            raise ModelError(f"image processor {name!r} is not one transformers {transformers.__version__} has; "
                             f"save the directory's processor with a transformers that has it")
        return cls.from_dict(config)

    def images(self, values: Sequence[Any]) -> list:
        """Each value as an RGB PIL image (a path, encoded bytes, a PIL image or an HWC uint8 array)."""
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        out = []
        for i, v in enumerate(values):
            try:
                if isinstance(v, (str, os.PathLike)):
                    v = Image.open(v)
                elif isinstance(v, (bytes, bytearray, memoryview)):
                    if len(v) > MAX_IMAGE_BYTES:
                        raise InputError(f"image {i}: {len(v)} bytes, over the {MAX_IMAGE_BYTES} taken")
                    v = Image.open(io.BytesIO(bytes(v)))
                elif isinstance(v, np.ndarray):
                    v = Image.fromarray(v)
                if not isinstance(v, Image.Image):
                    raise InputError(f"image {i} is a {type(v).__name__}; give a path, its bytes, a PIL image or an "
                                     f"HWC uint8 array")
                out.append(v.convert("RGB"))
            except (OSError, UnidentifiedImageError, TypeError, ValueError) as e:
                raise InputError(f"image {i}: cannot be read as an image ({type(e).__name__}: {str(e)[:120]})") from None
        return out

    def pixels(self, images: list) -> torch.Tensor:
        """The processor's pixel_values (n, 3, H, W) for RGB PIL images."""
        return self._processor(images=images, return_tensors="pt")["pixel_values"]

    def example(self, batch: int) -> dict[str, torch.Tensor]:
        from PIL import Image

        return {"pixel_values": self.pixels([Image.new("RGB", (256, 256), (128, 96, 64))] * batch)}

    # the front's contract, as the text front's (serve/text.py runs either): values to encodings,
    # an encoding to the graph's inputs, the graph's outputs to one answer
    def encode(self, values: Sequence[Any]) -> list[Picture]:
        return [Picture(self.pixels([image]), (image.height, image.width)) for image in self.images(values)]

    def feed(self, encoding: Picture, pad_to: int | None = None) -> dict[str, torch.Tensor]:
        return {"pixel_values": encoding.pixels}

    def size(self, encoding) -> int:
        return 1

    def answer(self, outputs, encoding: Picture):
        """One image's answer: its label, its score and every label's score; for a detector, its
        detections ({label, score, box: xmin, ymin, xmax, ymax} in the image's own pixels), as
        transformers' pipelines give them, through the processor's own post-processing."""
        if self.task == "object-detection":
            found = self._processor.post_process_object_detection(
                SimpleNamespace(logits=outputs["logits"].float(), pred_boxes=outputs["pred_boxes"].float()),
                threshold=self.threshold, target_sizes=[encoding.size])[0]
            return [{"label": self.labels[int(label)], "score": float(score),
                     "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), (float(v) for v in box)))}
                    for score, label, box in zip(found["scores"], found["labels"], found["boxes"])]
        return label_scores(outputs["logits"][0].float(), self.labels, self.multi_label)

    def run(self, module, values: Sequence[Any]) -> list[dict]:
        """Answers of `module` for images `values`, one engine call per image."""
        with torch.no_grad():
            return [self.answer(module(**self.feed(e)), e) for e in self.encode(values)]

    # -- in a file ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_file(cls, value: Any, source: str) -> "ImageIO":
        if (not isinstance(value, dict) or value.get("task") not in ("image-classification", "object-detection")
                or type(value.get("threshold")) is not float
                or not isinstance(value.get("processor"), str) or len(value["processor"]) > MAX_PROCESSOR_BYTES
                or not isinstance(value.get("labels"), list) or not all(isinstance(x, str) for x in value["labels"])
                or not isinstance(value.get("multi_label"), bool)):
            raise ArtifactError(f"{source}: its image front (processor and labels) is malformed; save the model again")
        try:
            json.loads(value["processor"])
        except ValueError:
            raise ArtifactError(f"{source}: its image processor is not JSON; save the model again") from None
        return cls(value["task"], value["processor"], tuple(value["labels"]), value["multi_label"], value["threshold"])
