"""Resolve the MODEL argument of the CLI: a built-in zoo name, `path/to/file.py:function`, a model
file or directory, or `torchvision:NAME` / `timm:NAME` (library.py)."""
from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

from .. import zoo
from ..core.source import from_traceback
from ..errors import ModelError, first_line


def load_model(spec: str, tiny: bool = False, shapes: list[str] | tuple = (), task: str | None = None,
               length: int | None = None, weights: str | None = None) -> tuple[torch.nn.Module, Any, str]:
    """Returns (model, example_inputs, display name). The model is a torch.nn.Module, or an ONNX
    path / SavedModel directory / Keras model that archfit.trace imports (see frontends), or a
    Hugging Face / sentence-transformers directory read for `task` (text.Directory: trace
    attaches its tokenizer to what it compiles; torch_module(model) is the module itself)."""
    from ..text import is_directory, read_directory
    from .library import is_library_model, load_library_model

    if is_library_model(spec):
        return load_library_model(spec, weights)
    if weights is not None:
        raise ModelError(f"--weights is for torchvision:NAME and timm:NAME models; {spec!r} is neither")
    if is_directory(spec):
        d = read_directory(spec, task, length)
        return d, d.inputs, d.name
    if task is not None or length is not None:
        raise ModelError(f"--task and --length are for Hugging Face directories; {spec!r} is not one (no "
                         f"config.json or modules.json in it)")
    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        path, func = spec.rsplit(":", 1)
        if not os.path.isfile(path):
            raise ModelError(f"model file {path!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"archfit_user_{abs(hash(path))}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)  # the user's own file, run on purpose
        except Exception as e:  # noqa: BLE001 - the user's code failing is named, with its line
            raise ModelError(f"{path} raised {type(e).__name__} when imported{_where(e)}: {first_line(e, 200)}") from e
        if not hasattr(module, func):
            raise ModelError(f"{path} has no function {func!r}; it must return (model, example_inputs)")
        try:
            result = getattr(module, func)()
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"{spec} raised {type(e).__name__}{_where(e)}: {first_line(e, 200)}; it must return "
                             f"(model, example_inputs)") from e
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module)):
            raise ModelError(f"{spec} must return (model, example_inputs), got {type(result).__name__}")
        return result[0].eval(), result[1], func
    if spec.endswith(".pt2"):
        return _load_exported(spec)
    from ..frontends import example_inputs_for, is_model_file

    if is_model_file(spec):  # ONNX file or SavedModel directory; imported by archfit.trace/analyze
        if not os.path.exists(spec):
            raise ModelError(f"model file {spec!r} does not exist")
        return spec, example_inputs_for(spec, _shapes(shapes)), os.path.basename(spec.rstrip("/"))
    model, inputs = zoo.build(spec, tiny=tiny)
    return model, inputs, spec + (" (tiny)" if tiny else "")


def torch_module(model):
    """The torch module behind what load_model returned (a directory's task model; others as they are)."""
    from ..text import Directory

    return model.module if isinstance(model, Directory) else model


def _shapes(specs) -> dict[str, tuple[list[int], str | None]]:
    """--shape NAME=1x3x224x224[:dtype] -> {NAME: ([1, 3, 224, 224], dtype)}."""
    out = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        dims, _, dtype = rest.partition(":")
        try:
            out[name] = ([int(d) for d in dims.lower().split("x")], dtype or None)
        except ValueError:
            raise ModelError(f"--shape {spec!r}: expected NAME=1x3x224x224 or NAME=1x128:int64") from None
        if not name or any(d < 1 for d in out[name][0]):
            raise ModelError(f"--shape {spec!r}: expected NAME=1x3x224x224 or NAME=1x128:int64 (positive dims)")
    return out


def _where(e: BaseException) -> str:
    where = from_traceback(e.__traceback__)
    return f" at {where}" if where else ""


def _load_exported(path: str) -> tuple[torch.nn.Module, Any, str]:
    """A program saved with torch.export.save; its example inputs travel with it."""
    if not os.path.isfile(path):
        raise ModelError(f"exported program {path!r} does not exist")
    try:
        ep = torch.export.load(path)
    except Exception as e:  # noqa: BLE001 - torch's loader errors become one line
        raise ModelError(f"{path} is not a loadable torch.export program ({type(e).__name__}: {e}); save it with "
                         f"torch.export.save") from None
    if ep.example_inputs is None:
        raise ModelError(f"{path} holds no example inputs; export with example inputs and save again")
    args, kwargs = ep.example_inputs
    inputs = dict(kwargs) if kwargs and not args else args
    if kwargs and args:
        raise ModelError(f"{path} mixes positional and keyword example inputs; archfit's CLI needs one kind")
    return ep.module(), inputs, os.path.basename(path)
