"""Stage 6: one deployable file. A container (container.py) holding a JSON manifest, per static
module its host program as JSON, host weights as safetensors and one blob per compiled engine,
and the fit report. Loading reads JSON, safetensors and backend blobs only, and runs the host
program through host_program.py's closed vocabulary: nothing stored in the file is executed."""
from __future__ import annotations

import importlib
import json
import os
from functools import partial
from pathlib import Path

import torch
from torch.utils import _pytree as pytree

from .._version import __version__
from ..core.capture import TensorSpec, attr_of
from ..core.compile import give_cores_to_sole_engine
from ..core.engines import EngineModule, engines_of
from ..core.kinds import kind_class
from ..core.module import MAX_DIM, ArchfitModule, CompiledModule, Parts
from ..errors import ArtifactError, TargetError, first_line
from ..ops import library_name
from ..targets import get_target
from . import container
from .host_program import DTYPES, HostProgram, graph_from_json, graph_to_json

MAX_INPUTS = 4096
TOKENIZER = "text/tokenizer.json"
MAX_RANK = 16


def _versions(target) -> dict:
    return {"archfit": __version__, "torch": torch.__version__, **target.versions()}


def _host_weights(gm: torch.nn.Module) -> dict[str, torch.Tensor]:
    # a loaded HostProgram keeps its weights in a flat dict (attr), a traced graph as attributes
    attr = getattr(gm, "attr", None) or (lambda target: attr_of(gm, target))
    out = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            obj = attr(n.target)
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
    engines = [_engine_files(name, mod, target, prefix, files) for name, mod in engines_of(gm)]
    files[f"{prefix}host.json"] = json.dumps(graph_to_json(gm.graph)).encode()
    files[f"{prefix}host_weights.safetensors"] = save_tensors(_host_weights(gm))
    entry = {"inputs": _input_entries(module.inputs), "engines": engines, "custom_ops": _custom_ops(gm),
             "prefix": prefix, "host_one_thread": module.one_thread is True}
    return files, entry


def _input_entries(inputs) -> list[dict]:
    return [{"name": s.name, "shape": list(s.shape), "dtype": _dtype_name(s.dtype), "index_limit": s.index_limit}
            for s in inputs]


def _component(module: ArchfitModule, target, prefix: str) -> tuple[dict[str, bytes], dict]:
    """Files and manifest entry of one component: its kind's parts (static graphs, each with its
    host program, or bare engines) under `prefix`, and its kind's own data."""
    parts = module.stored_parts()
    files: dict[str, bytes] = {}
    entries = []
    for sub, graph in parts.graphs:
        graph_files, entry = _module_files(graph, target, f"{prefix}{sub}")
        files |= graph_files
        entries.append(entry)
    if parts.engines:  # engines with no host program between them (a dynamic-length engine)
        engines = [_engine_files(name, engine, target, prefix, files) for name, engine in parts.engines]
        entries.append({"inputs": _input_entries(parts.inputs), "engines": engines, "custom_ops": [], "prefix": prefix})
    entry = {"kind": module.kind, "inputs": _input_entries(parts.inputs), "modules": entries}
    if parts.specs is not None:
        entry |= {"in_spec": pytree.treespec_dumps(parts.specs[0]), "out_spec": pytree.treespec_dumps(parts.specs[1])}
    return files, entry | parts.table


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
    manifest = {
        "versions": _versions(target), "target": target.name, "backend": target.backend, "device": target.device,
        "precision": module.precision, "emulated": module.emulated, "kind": module.kind,
        "inputs": module.file_inputs(components),
        "components": components, "meta": module.file_meta(),
        "engines": [e for c in components.values() for m in c["modules"] for e in m["engines"]],
        "custom_ops": sorted({op for c in components.values() for m in c["modules"] for op in m["custom_ops"]}),
    }
    if module.frontend is not None:  # an imported model: its input names and output type, plain data
        manifest["frontend"] = module.frontend.to_dict()
    if module.text is not None:  # compiled from a directory: its tokenizer (JSON data) and task
        manifest["text"] = module.text.to_dict()
        files[TOKENIZER] = module.text.tokenizer.encode()
    if module.image is not None:  # compiled from an image directory: its processor (JSON data)
        manifest["image"] = module.image.to_dict()
    return container.write(path, manifest, files)


def read_manifest(path: str | os.PathLike) -> tuple[dict, str]:
    """Manifest and report text of a file, verified (digests, and every host program against
    the vocabulary load would run it with); loads no engine (for `inspect`)."""
    path = Path(path)
    manifest, blobs = container.read(path)
    try:
        _import_own_ops(manifest)
        _name_kinds(manifest)
        for component in manifest["components"].values():
            for entry in component["modules"]:
                name = f"{entry['prefix']}host.json"
                if name in blobs:  # a component of bare engines has no host program
                    graph_from_json(container.parse_json(blobs[name], name, path), None)
    except (KeyError, TypeError, AttributeError) as e:
        raise ArtifactError(f"{path}: manifest is malformed ({type(e).__name__}); the file was not written by "
                            f"archfit.save, or is damaged: save it again") from None
    return manifest, blobs.get("report.txt", b"").decode("utf-8", errors="replace")


def _name_kinds(manifest: dict) -> None:
    """Files written before kinds were named by shape call static, bucketed and dynamic files
    "module" and leave their components unnamed: the names they would have now, from their entries."""
    for component in manifest["components"].values():
        if "kind" not in component:
            component["kind"] = ("dynamic" if component.get("dynamic") else "bucketed" if component.get("buckets")
                                 else "static")
    if manifest.get("kind") == "module":
        manifest["kind"] = manifest["components"]["main"]["kind"]


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


def _tensor_specs(inputs, path: Path) -> tuple[TensorSpec, ...]:
    if not isinstance(inputs, list) or len(inputs) > MAX_INPUTS:
        raise ArtifactError(f"{path}: input list is malformed")
    return tuple(_tensor_spec(i, path) for i in inputs)


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
    except ArtifactError as err:  # the target said why (an engine compiled for another kind of CPU)
        raise ArtifactError(f"{path}: engine {str(e['module'])[:60]}: {err.args[0]}") from err
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
    give_cores_to_sole_engine(program)
    return CompiledModule(program, in_spec, out_spec, _tensor_specs(entry["inputs"], path), target.name,
                          str(manifest["precision"]), emulated=bool(manifest["emulated"]), manifest=manifest,
                          one_thread=entry.get("host_one_thread") is True)  # the choice measured at compile time


def _load_component(path: Path, manifest: dict, entry: dict, blobs: dict[str, bytes], target, shared: dict):
    """One component: its kind's parts loaded (static graphs where the entry has a host program,
    bare engines where it has none), then handed to the kind to rebuild itself."""
    kind = kind_class(entry["kind"]) if isinstance(entry["kind"], str) else None
    if kind is None:
        raise ArtifactError(f"{path} holds a component of kind {str(entry['kind'])[:40]!r}, which this archfit "
                            f"({__version__}) cannot load; upgrade archfit")
    specs = (_treespec(entry["in_spec"], path), _treespec(entry["out_spec"], path)) if "in_spec" in entry else None
    once = _once(manifest, blobs, shared)
    graphs, engines = [], []
    for e in entry["modules"]:
        if f"{e['prefix']}host.json" in blobs:
            if specs is None:
                raise ArtifactError(f"{path}: a host program without its input/output structure")
            graphs.append((e["prefix"], _load_module(path, manifest, e, blobs, target, shared, *specs)))
        else:
            engines += [(x["module"], _load_engine(path, manifest, x, blobs, target, once)) for x in e["engines"]]
    parts = Parts(_tensor_specs(entry["inputs"], path), tuple(graphs), tuple(engines), specs, entry)
    return kind.from_parts(parts, manifest, str(path))


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
    from ..targets.base import PRECISIONS

    wrong = [k for k, t in _TOP_LEVEL.items() if not isinstance(manifest.get(k), t)]
    if wrong or manifest["precision"] not in PRECISIONS or not manifest["components"]:
        raise ArtifactError(f"{path}: manifest field {(wrong or ['precision/components'])[0]!r} is missing or of the "
                            f"wrong type; the file was not written by archfit.save, or is damaged")

    _import_own_ops(manifest)
    _name_kinds(manifest)
    kind = kind_class(manifest["kind"])
    if kind is None:
        raise ArtifactError(f"{path} holds a {manifest['kind'][:40]!r} model, which this archfit ({__version__}) "
                            f"cannot load; upgrade archfit")
    try:
        target = get_target(str(manifest["target"]))
    except TargetError as e:
        raise ArtifactError(f"{path} needs target {str(manifest['target'])[:60]!r} (backend "
                            f"{str(manifest.get('backend'))[:60]!r}), which is not usable here: {e.args[0]}") from None
    kind.check_loadable(manifest["meta"], model, path)  # say so before loading any engine
    shared: dict = {}  # file digest -> what was loaded from it, so common parts exist once in memory
    components = {name: _load_component(path, manifest, c, blobs, target, shared)
                  for name, c in manifest["components"].items()}
    module = kind.from_file(components, manifest["meta"], manifest, model, str(path))
    module.frontend = _frontend(path, manifest.get("frontend"))
    if "text" in manifest:
        from ..text.io import TextIO

        module.text = TextIO.from_file(manifest["text"], blobs.get(TOKENIZER), str(path))
    if "image" in manifest:
        from ..text.image import ImageIO

        module.image = ImageIO.from_file(manifest["image"], str(path))
    return module


def _frontend(path: Path, value):
    """The imported model's input names and framework, checked as plain data."""
    from ..frontends import FrameworkIO

    if value is None:
        return None
    io = FrameworkIO.from_dict(value)
    if io is None:
        raise ArtifactError(f"{path}: manifest field 'frontend' is malformed; the file was not written by "
                            f"archfit.save, or is damaged")
    return io
