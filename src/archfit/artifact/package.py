"""Stage 6: one deployable file. A container (container.py) holding a JSON manifest, per static
module its host program as JSON, host weights as safetensors and one blob per compiled engine,
and the fit report. Loading reads JSON, safetensors and backend blobs only, and runs the host
program through host_program.py's closed vocabulary: nothing stored in the file is executed."""
from __future__ import annotations

import importlib
import json
import os
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from torch.utils import _pytree as pytree

from .._version import __version__
from ..core.capture import TensorSpec, attr_of
from ..core.compile import EngineModule, hand_over_if_alone
from ..core.module import ArchfitModule, CompiledModule
from ..core.threads import ONE_THREAD, one_thread_for
from ..errors import ArtifactError, TargetError, first_line
from ..ops import library_name
from ..shapes.choose import BucketChoice
from ..shapes.dispatch import BucketedModule, Padding
from ..shapes.dynamic import DynamicModule, dynamic_entry
from ..shapes.dynamic import from_entry as dynamic_from_entry
from ..targets import get_target
from . import container
from .host_program import DTYPES, HostProgram, graph_from_json, graph_to_json

MAX_INPUTS = 4096
MAX_RANK = 16
MAX_DIM = 2**31
MAX_BUCKETS = 4096


def _versions(target) -> dict:
    return {"archfit": __version__, "torch": torch.__version__, **target.versions()}


def _engine_modules(gm: torch.nn.Module) -> list[tuple[str, EngineModule]]:
    """(name, engine module) of a traced graph module or a loaded host program."""
    children = gm.engines.items() if isinstance(gm, HostProgram) else gm.named_children()
    return [(name, m) for name, m in children if isinstance(m, EngineModule)]


def _host_weights(gm: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            obj = gm.attr(n.target) if isinstance(gm, HostProgram) else attr_of(gm, n.target)
            # safetensors refuses shared or strided storage: store a compact copy of each
            out[n.target] = obj.detach().contiguous().clone()
    return out


def _custom_ops(gm: torch.nn.Module) -> list[str]:
    ops = {library_name(n.target) for n in gm.graph.nodes
           if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
           and n.target.namespace not in ("aten", "prims")}
    return sorted(ops)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _engine_files(name: str, mod: EngineModule, target, prefix: str, files: dict[str, bytes]) -> dict:
    engine = {"module": name, "index": mod.index, "out_dtypes": [_dtype_name(d) for d in mod.out_dtypes]}
    if mod.target != target.name:  # per_partition: this engine runs on another target than the file's
        engine["target"] = mod.target
        target = get_target(mod.target)
    parts = mod.engine.serialize_parts()  # weights apart, so each is stored once
    blob = mod.engine.serialize() if parts is None else None
    if target.load is None or (parts is None and blob is None):
        raise ArtifactError(f"target {target.name!r} cannot save its engines (no serialize/load); trace with a "
                            f"target that can, e.g. openvino")
    if parts is not None:
        engine["parts"] = {}
        for part, data in parts.items():
            engine["parts"][part] = file = f"{prefix}engines/{name}/{part}"
            files[file] = data
    else:
        engine["file"] = file = f"{prefix}engines/{name}.bin"
        files[file] = blob
    return engine


def _module_files(module: CompiledModule, target, prefix: str) -> tuple[dict[str, bytes], dict]:
    """The files and manifest entry of one static-shape module, its names under `prefix`."""
    from safetensors.torch import save as save_tensors

    gm = module.graph_module
    files: dict[str, bytes] = {}
    engines = [_engine_files(name, mod, target, prefix, files) for name, mod in _engine_modules(gm)]
    files[f"{prefix}host.json"] = json.dumps(graph_to_json(gm.graph)).encode()
    files[f"{prefix}host_weights.safetensors"] = save_tensors(_host_weights(gm))
    entry = {"inputs": _input_entries(module.inputs), "engines": engines, "custom_ops": _custom_ops(gm),
             "prefix": prefix, "host_one_thread": one_thread_for(gm)}
    return files, entry


def _input_entries(inputs) -> list[dict]:
    return [{"name": s.name, "shape": list(s.shape), "dtype": _dtype_name(s.dtype), "index_limit": s.index_limit}
            for s in inputs]


def _dynamic_component(module: DynamicModule, target, prefix: str) -> tuple[dict[str, bytes], dict]:
    """A dynamic-length module: its one engine and its input bounds, no host program."""
    files: dict[str, bytes] = {}
    engine = _engine_files("dynamic", module.engine, target, prefix, files)
    entry = {"inputs": _input_entries(module.inputs), "engines": [engine], "custom_ops": [], "prefix": prefix}
    return files, {"inputs": entry["inputs"], "modules": [entry], "buckets": None, "dynamic": dynamic_entry(module)}


def _component(module: ArchfitModule, target, prefix: str) -> tuple[dict[str, bytes], dict]:
    """Files and manifest entry of one static or bucketed module (all its buckets)."""
    if isinstance(module, DynamicModule):
        return _dynamic_component(module, target, prefix)
    if isinstance(module, BucketedModule):
        parts = [(module.buckets[str(s)], f"{prefix}bucket_{s}/") for s in module.sizes]
        choice = module.choice
        buckets = {"sizes": list(module.sizes), "padding": module.padding.to_dict(),
                   "choice": None if choice is None else asdict(choice),
                   "safety": [list(s) for s in module.safety or ()]}
    elif isinstance(module, CompiledModule):
        parts, buckets = [(module, prefix)], None
    else:
        raise ArtifactError(f"cannot store a {type(module).__name__} as a component")
    files: dict[str, bytes] = {}
    entries = []
    for part, part_prefix in parts:
        part_files, entry = _module_files(part, target, part_prefix)
        files |= part_files
        entries.append(entry)
    return files, {"inputs": entries[-1]["inputs"], "in_spec": pytree.treespec_dumps(module.in_spec),
                   "out_spec": pytree.treespec_dumps(module.out_spec), "modules": entries, "buckets": buckets}


def save(module: ArchfitModule, path: str | os.PathLike) -> Path:
    """Write `module` (from archfit.trace or archfit.trace_seq2seq) to one file; returns its path.
    Identical contents (the weights of every bucket's host program, engines that came out the
    same) are stored once. A path that is a directory, a device or in a missing folder is refused."""
    if not isinstance(module, ArchfitModule):
        raise ArtifactError(f"archfit.save takes the module archfit.trace returned, got {type(module).__name__}")
    container.check_output_path(path)
    target = get_target(module.target)
    files, components = {}, {}
    for name, part in module.file_components().items():
        part_files, components[name] = _component(part, target, f"{name}/")
        files |= part_files
    report = module.report
    files["report.json"] = (report.to_json() if report is not None else "null").encode()
    text = report.to_text() if report is not None else ""
    summary = module.summary()
    files["report.txt"] = (text + ("\n" + summary + "\n" if summary else "")).encode()
    first = next(iter(components.values()))
    manifest = {
        "versions": _versions(target), "target": target.name, "backend": target.backend, "device": target.device,
        "precision": module.precision, "emulated": module.emulated, "kind": module.kind,
        "inputs": first["inputs"] if module.kind != "attached" else [],
        "components": components, "meta": module.file_meta(),
        "engines": [e for c in components.values() for m in c["modules"] for e in m["engines"]],
        "custom_ops": sorted({op for c in components.values() for m in c["modules"] for op in m["custom_ops"]}),
    }
    if module.frontend is not None:  # an imported model: its input names and output type, plain data
        manifest["frontend"] = module.frontend
    return container.write(path, manifest, files)


def read_manifest(path: str | os.PathLike) -> tuple[dict, str]:
    """Manifest and report text of a file, verified (digests, and every host program against
    the vocabulary load would run it with); loads no engine (for `inspect`)."""
    path = Path(path)
    manifest, blobs = container.read(path)
    try:
        _import_own_ops(manifest)
        for component in manifest["components"].values():
            for entry in component["modules"] if not component.get("dynamic") else ():
                name = f"{entry['prefix']}host.json"
                graph_from_json(container.parse_json(blobs[name], name, path), None)
    except (KeyError, TypeError, AttributeError) as e:
        raise ArtifactError(f"{path}: manifest is malformed ({type(e).__name__}); the file was not written by "
                            f"archfit.save, or is damaged: save it again") from None
    return manifest, blobs.get("report.txt", b"").decode("utf-8", errors="replace")


def _import_own_ops(manifest: dict) -> None:
    if any(str(op).startswith("archfit_zoo::") for op in manifest.get("custom_ops", [])):
        importlib.import_module("archfit.zoo")  # archfit's own example ops, from this installed package


def _treespec(text, path: Path):
    if not isinstance(text, str) or len(text) > container.MAX_JSON_BYTES:
        raise ArtifactError(f"{path}: input/output structure is malformed")
    if '"transformers.' in text:
        # Output classes of transformers register with pytree when their module is imported: the
        # installed package's own module, named here, never one named by the file.
        importlib.import_module("transformers.modeling_outputs")
    try:
        return pytree.treespec_loads(text)
    except RecursionError:
        raise ArtifactError(f"{path}: input/output structure is nested too deep") from None
    except (KeyError, ValueError, NotImplementedError, TypeError, AttributeError) as e:
        raise ArtifactError(f"{path}: its input/output structure uses a type not registered here "
                            f"({first_line(e, 120)}); import the module that defines it before archfit.load") from None


def _tensor_spec(d: dict, path: Path) -> TensorSpec:
    shape = d["shape"]
    if not (isinstance(d["name"], str) and len(d["name"]) <= 200 and isinstance(shape, list) and len(shape) <= MAX_RANK
            and all(type(x) is int and 0 <= x <= MAX_DIM for x in shape) and d["dtype"] in DTYPES):
        raise ArtifactError(f"{path}: input {str(d.get('name'))[:60]!r} has a malformed shape or dtype")
    limit = d.get("index_limit")
    if limit is not None and not (type(limit) is int and 0 < limit <= MAX_DIM):
        raise ArtifactError(f"{path}: input {d['name'][:60]!r} has a malformed index limit")
    return TensorSpec(d["name"], tuple(shape), DTYPES[d["dtype"]], limit)


def _engine_target(path: Path, e: dict, target):
    """The target of one engine: the file's, or its own when per_partition mixed targets."""
    if "target" not in e:
        return target
    try:
        return get_target(str(e["target"]))
    except TargetError as err:
        raise ArtifactError(f"{path}: engine {str(e.get('module'))[:60]} needs target {str(e['target'])[:60]!r}, "
                            f"which is not usable here: {err.args[0]}") from None


def _load_engine(path: Path, manifest: dict, e: dict, blobs: dict[str, bytes], target, once) -> EngineModule:
    target = _engine_target(path, e, target)
    try:
        if "parts" in e:
            engine = target.load({str(part): blobs[file] for part, file in e["parts"].items()})
        else:
            engine = once(e["file"], target.load)
            engine.origin = partial(container.read_member, path, e["file"], manifest["files"][e["file"]])
    except KeyError:
        raise ArtifactError(f"{path}: engine {str(e.get('module'))[:60]} names a member the file does not "
                            f"hold") from None
    except Exception as err:  # noqa: BLE001 - a backend refusing its blob becomes one line
        raise ArtifactError(
            f"{path}: {target.backend} cannot load engine {str(e['module'])[:60]} ({first_line(err, 200)}); it was "
            f"saved with {str(manifest.get('versions'))[:200]}: compile again with this machine's versions"
        ) from None
    dtypes = [DTYPES[d] for d in e["out_dtypes"]]
    return EngineModule(engine, int(e["index"]), target.name, dtypes)


def _once(manifest: dict, blobs: dict[str, bytes], shared: dict):
    """once(member, make): what make(bytes) gave for a member with these contents before, else make it."""
    def once(name: str, make):
        digest = manifest["files"][name]
        if digest not in shared:
            shared[digest] = make(blobs[name])
        return shared[digest]
    return once


def _load_module(path: Path, manifest: dict, entry: dict, blobs: dict[str, bytes], target, shared: dict,
                 in_spec, out_spec) -> CompiledModule:
    """One static-shape module. `shared` maps file digests to what was already loaded from them,
    so weights and engines that several buckets hold in common exist once in memory too."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    prefix = entry["prefix"]

    once = _once(manifest, blobs, shared)
    try:
        weights = dict(once(f"{prefix}host_weights.safetensors", load_tensors))
    except SafetensorError as e:
        raise ArtifactError(f"{path}: host weights are malformed ({first_line(e, 100)})") from None
    engines = {e["module"]: _load_engine(path, manifest, e, blobs, target, once) for e in entry["engines"]}
    host = container.parse_json(blobs[f"{prefix}host.json"], f"{prefix}host.json", path)
    graph = graph_from_json(host, set(weights) | set(engines))
    program = HostProgram(graph, weights, engines)
    hand_over_if_alone(program)
    setattr(program, ONE_THREAD, entry.get("host_one_thread") is True)  # the choice measured at compile time
    inputs = entry["inputs"]
    if not isinstance(inputs, list) or len(inputs) > MAX_INPUTS:
        raise ArtifactError(f"{path}: input list is malformed")
    return CompiledModule(program, in_spec, out_spec, tuple(_tensor_spec(i, path) for i in inputs), target.name,
                          str(manifest["precision"]), emulated=bool(manifest["emulated"]), manifest=manifest)


def _load_dynamic(path: Path, manifest: dict, entry: dict, blobs: dict[str, bytes], target, shared: dict):
    module = entry["modules"][0]
    if len(module["engines"]) != 1 or not isinstance(module["inputs"], list) or len(module["inputs"]) > MAX_INPUTS:
        raise ArtifactError(f"{path}: dynamic module table is malformed")

    once = _once(manifest, blobs, shared)
    engine = _load_engine(path, manifest, module["engines"][0], blobs, target, once)
    inputs = [_tensor_spec(i, path) for i in module["inputs"]]
    return dynamic_from_entry(engine, inputs, entry["dynamic"], manifest, str(path))


def _load_component(path: Path, manifest: dict, entry: dict, blobs: dict[str, bytes], target, shared: dict):
    if entry.get("dynamic"):
        return _load_dynamic(path, manifest, entry, blobs, target, shared)
    in_spec, out_spec = _treespec(entry["in_spec"], path), _treespec(entry["out_spec"], path)
    modules = [_load_module(path, manifest, e, blobs, target, shared, in_spec, out_spec) for e in entry["modules"]]
    buckets = entry.get("buckets")
    if not buckets:
        return modules[0]
    sizes = buckets["sizes"]
    if not (isinstance(sizes, list) and 0 < len(sizes) == len(modules) <= MAX_BUCKETS
            and all(type(s) is int and 0 <= s <= MAX_DIM for s in sizes)):
        raise ArtifactError(f"{path}: bucket table is malformed")
    choice = BucketChoice(**{**buckets["choice"], "boundaries": tuple(buckets["choice"]["boundaries"])}) \
        if buckets["choice"] else None
    return BucketedModule(dict(zip(sizes, modules)), Padding.from_dict(buckets["padding"]), choice,
                          tuple(tuple(s) for s in buckets["safety"]), manifest)


def _kinds() -> dict[str, type[ArchfitModule]]:
    """The module class behind each kind of file. Seq2seq imports transformers: only when needed."""
    from ..regions.attached import AttachedModule
    from ..shapes.packed import PackedModule

    kinds = {"module": ArchfitModule, "attached": AttachedModule, "packed": PackedModule}
    try:
        from ..seq2seq.generate import Seq2SeqModule
    except ImportError:  # transformers missing: such files are refused below, by kind
        return kinds
    return kinds | {"seq2seq": Seq2SeqModule}


def load(path: str | os.PathLike, model: torch.nn.Module | None = None) -> ArchfitModule:
    """Load a file written by archfit.save. Needs the backend, not the compiler or model code,
    except for files of models that could not be captured whole (kind "attached"): their
    compiled regions are attached to `model`, whose own Python runs the rest."""
    path = Path(path)
    manifest, blobs = container.read(path)
    try:
        return _load(path, manifest, blobs, model)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        # every value of a manifest written by archfit.save has the right type and is present
        raise ArtifactError(f"{path}: manifest is malformed ({type(e).__name__}: {first_line(e, 80)}); the file was "
                            f"not written by archfit.save, or is damaged: save it again") from None


_TOP_LEVEL = {"kind": str, "target": str, "precision": str, "emulated": bool, "meta": dict, "components": dict,
              "versions": dict}


def _load(path: Path, manifest: dict, blobs: dict[str, bytes], model) -> ArchfitModule:
    from ..regions.attached import check_attachable
    from ..targets.base import PRECISIONS

    wrong = [k for k, t in _TOP_LEVEL.items() if not isinstance(manifest.get(k), t)]
    if wrong or manifest["precision"] not in PRECISIONS or not manifest["components"]:
        raise ArtifactError(f"{path}: manifest field {(wrong or ['precision/components'])[0]!r} is missing or of the "
                            f"wrong type; the file was not written by archfit.save, or is damaged")

    _import_own_ops(manifest)
    kind = manifest.get("kind")
    cls = _kinds().get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ArtifactError(f"{path} holds a {str(kind)[:40]!r} model, which this archfit ({__version__}) cannot "
                            f"load; upgrade archfit")
    try:
        target = get_target(str(manifest["target"]))
    except TargetError as e:
        raise ArtifactError(f"{path} needs target {str(manifest['target'])[:60]!r} (backend "
                            f"{str(manifest.get('backend'))[:60]!r}), which is not usable here: {e.args[0]}") from None
    if kind == "attached":  # say so before loading any engine
        check_attachable(manifest["meta"], model, path)
    shared: dict = {}  # file digest -> what was loaded from it, so common parts exist once in memory
    components = {name: _load_component(path, manifest, c, blobs, target, shared)
                  for name, c in manifest["components"].items()}
    module = cls.from_file(components, manifest["meta"], manifest, model, str(path))
    module.frontend = _frontend(path, manifest.get("frontend"))
    return module


def _frontend(path: Path, value) -> dict | None:
    """The imported model's input names and framework, checked as plain data."""
    from ..frontends import FRAMEWORKS

    if value is None:
        return None
    ok = (isinstance(value, dict) and value.get("framework") in FRAMEWORKS and isinstance(value.get("inputs"), list)
          and all(isinstance(n, str) for n in value["inputs"]))
    if not ok:
        raise ArtifactError(f"{path}: manifest field 'frontend' is malformed; the file was not written by "
                            f"archfit.save, or is damaged")
    outputs, ids = value.get("outputs", "list"), value.get("ids", [])
    if outputs not in ("list", "dict") or not isinstance(ids, list) or not all(i in value["inputs"] for i in ids):
        raise ArtifactError(f"{path}: manifest field 'frontend' is malformed; the file was not written by "
                            f"archfit.save, or is damaged")
    return {"framework": value["framework"], "inputs": list(value["inputs"]), "outputs": outputs, "ids": list(ids)}
