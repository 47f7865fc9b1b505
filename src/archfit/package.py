"""Stage 6: one deployable file. A zip holding a JSON manifest, the host program as JSON, host
weights as safetensors, one blob per compiled engine, and the fit report. Loading reads JSON,
safetensors and backend blobs only: nothing stored in the file is ever executed."""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path

import torch
from torch import fx
from torch.utils import _pytree as pytree

from . import __version__
from .buckets import BucketChoice
from .capture import TensorSpec, attr_of
from .compile import EngineModule, hand_over_if_alone
from .errors import ArtifactError, TargetError
from .dispatch import BucketedModule, Padding
from .runtime import CompiledModule
from .serialize import graph_from_json, graph_to_json
from .targets import get_target

FORMAT = "archfit"
FORMAT_VERSION = 3  # 2: identical files stored once; bucketed modules. 3: kinds with components (seq2seq)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _versions(target) -> dict:
    return {"archfit": __version__, "torch": torch.__version__, **target.versions()}


def _host_weights(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    out = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            obj = attr_of(gm, n.target)
            # safetensors refuses shared or strided storage: store a compact copy of each
            out[n.target] = obj.detach().contiguous().clone()
    return out


def _custom_ops(gm: fx.GraphModule) -> list[str]:
    ops = {f"{n.target.namespace}::{n.target._opname}" for n in gm.graph.nodes
           if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
           and n.target.namespace not in ("aten", "prims")}
    return sorted(ops)


def _module_files(module: CompiledModule, target, prefix: str) -> tuple[dict[str, bytes], dict]:
    """The files and manifest entries of one static-shape module, its names under `prefix`."""
    from safetensors.torch import save as save_tensors

    gm = module.graph_module
    files: dict[str, bytes] = {}
    engines = []
    for name, mod in gm.named_children():
        if isinstance(mod, EngineModule):
            if not hasattr(mod.engine, "serialize") or target.load is None:
                raise ArtifactError(f"target {target.name!r} cannot save its engines (no serialize/load); "
                                    f"trace with a target that can, e.g. openvino")
            engine = {"module": name, "index": mod.index,
                      "out_dtypes": [str(d).removeprefix("torch.") for d in mod.out_dtypes]}
            if hasattr(mod.engine, "serialize_parts"):  # weights apart, so each is stored once
                engine["parts"] = {}
                for part, blob in mod.engine.serialize_parts().items():
                    engine["parts"][part] = file = f"{prefix}engines/{name}/{part}"
                    files[file] = blob
            else:
                engine["file"] = file = f"{prefix}engines/{name}.bin"
                files[file] = mod.engine.serialize()
            engines.append(engine)
    files[f"{prefix}host.json"] = json.dumps(graph_to_json(gm)).encode()
    files[f"{prefix}host_weights.safetensors"] = save_tensors(_host_weights(gm))
    entry = {
        "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype).removeprefix("torch.")}
                   for s in module.inputs],
        "engines": engines, "custom_ops": _custom_ops(gm), "prefix": prefix,
    }
    return files, entry


def _bucket_manifest(module: BucketedModule) -> dict:
    choice = module.choice
    return {"sizes": list(module.sizes), "padding": module.padding.to_dict(),
            "choice": None if choice is None else asdict(choice),
            "safety": [list(s) for s in module.safety or ()]}


def _component(module: CompiledModule | BucketedModule, target, prefix: str) -> tuple[dict[str, bytes], dict]:
    """Files and manifest entry of one module archfit.trace returned (all its buckets)."""
    if isinstance(module, BucketedModule):
        parts = [(module.buckets[str(s)], f"{prefix}bucket_{s}/") for s in module.sizes]
    else:
        parts = [(module, prefix)]
    files: dict[str, bytes] = {}
    entries = []
    for part, part_prefix in parts:
        part_files, entry = _module_files(part, target, part_prefix)
        files |= part_files
        entries.append(entry)
    return files, {
        "inputs": entries[-1]["inputs"],
        "in_spec": pytree.treespec_dumps(module.in_spec),
        "out_spec": pytree.treespec_dumps(module.out_spec),
        "modules": entries,
        "buckets": _bucket_manifest(module) if isinstance(module, BucketedModule) else None,
    }


def _engines(component: dict) -> list[dict]:
    return [e for entry in component["modules"] for e in entry["engines"]]


def _components(parts: dict[str, tuple], target) -> tuple[dict[str, bytes], dict]:
    """Files and manifest body of a module made of several traced ones: {name: (module, prefix)}."""
    files, components = {}, {}
    for name, (part, prefix) in parts.items():
        part_files, components[name] = _component(part, target, prefix)
        files |= part_files
    return files, {"components": components, "engines": [e for c in components.values() for e in _engines(c)]}


def save(module, path: str | os.PathLike) -> Path:
    """Write `module` (from archfit.trace or archfit.trace_seq2seq) to one file; returns its path.
    Identical contents (the weights of every bucket's host program, engines that came out the
    same) are stored once."""
    from .generation import Seq2SeqModule
    from .regions import AttachedModule, plan_to_dict

    if not isinstance(module, (CompiledModule, BucketedModule, Seq2SeqModule, AttachedModule)):
        raise ArtifactError(f"archfit.save takes the module archfit.trace returned, got {type(module).__name__}")
    target = get_target(module.target)
    if isinstance(module, Seq2SeqModule):
        files, body = _components({"encoder": (module.encoder, "encoder/")} |
                                  {f"step_{r}": (module.steps[str(r)], f"step_{r}/") for r in module.rows}, target)
        body |= {"kind": "seq2seq", "inputs": body["components"]["encoder"]["inputs"],
                 "generation": {"config": module.generation_config.to_dict(),
                                "max_new_tokens": module.max_new_tokens, "source_len": module.source_len}}
    elif isinstance(module, AttachedModule):
        regions = enumerate(module.regions.items())
        files, body = _components({name: (part, f"region_{i}/") for i, (name, part) in regions}, target)
        body |= {"kind": "attached", "inputs": [],
                 "attach": {"class": module.model_class, "digests": module.digests, "plan": plan_to_dict(module.plan)}}
    else:
        files, body = _component(module, target, "")
        body = {"kind": "module", **body, "engines": _engines(body)}
    report = module.report
    files["report.json"] = (report.to_json() if report is not None else "null").encode()
    text = report.to_text() if report is not None else ""
    summary = module.summary() if hasattr(module, "summary") else ""
    files["report.txt"] = (text + ("\n" + summary + "\n" if summary else "")).encode()
    components = body.get("components") or {"": body}
    custom = {op for c in components.values() for m in c["modules"] for op in m["custom_ops"]}
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "versions": _versions(target),
        "target": target.name, "backend": target.backend, "device": target.device,
        "precision": module.precision, "emulated": module.emulated,
        **body,
        "custom_ops": sorted(custom),
        "files": {name: _sha(data) for name, data in files.items()},
    }
    path = Path(path)
    # Write beside the destination and rename: a crash never leaves a half-written artifact.
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr("manifest.json", json.dumps(manifest, indent=1))
            written: set[str] = set()
            for name, data in files.items():
                digest = manifest["files"][name]
                if digest not in written:  # a later file with the same bytes is read from the first
                    z.writestr(name, data)
                    written.add(digest)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _read(path: Path) -> tuple[dict, dict[str, bytes]]:
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "manifest.json" not in names:
                raise ArtifactError(f"{path} is not an archfit file (no manifest); save models with archfit.save")
            manifest = json.loads(z.read("manifest.json"))
            blobs = {name: z.read(name) for name in manifest.get("files", {}) if name in names}
            by_digest = {_sha(data): data for data in blobs.values()}
            for name, digest in manifest.get("files", {}).items():  # stored once, under its first name
                if name not in blobs and digest in by_digest:
                    blobs[name] = by_digest[digest]
    except zipfile.BadZipFile as e:
        raise ArtifactError(f"{path} is truncated, corrupted or not an archfit file ({e}); save it again "
                            f"with archfit.save") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as e:
        raise ArtifactError(f"{path} is corrupted ({type(e).__name__}); save it again with archfit.save") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an archfit file; save models with archfit.save")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(f"{path} was written in archfit file format {version}, this archfit ({__version__}) "
                            f"reads format {FORMAT_VERSION} and older; upgrade archfit")
    for name, digest in manifest["files"].items():
        if name not in blobs:
            raise ArtifactError(f"{path} is incomplete: {name} is missing; save it again with archfit.save")
        if _sha(blobs[name]) != digest:
            raise ArtifactError(f"{path} is corrupted: {name} fails its checksum; save it again with archfit.save")
    return manifest, blobs


def read_manifest(path: str | os.PathLike) -> tuple[dict, str]:
    """Manifest and report text of a file, fully verified; loads no engine (for `inspect`)."""
    manifest, blobs = _read(Path(path))
    return manifest, blobs.get("report.txt", b"").decode()


def _treespec(text: str, path: Path):
    try:
        return pytree.treespec_loads(text)
    except (KeyError, ValueError, NotImplementedError):
        pass
    # Output classes of transformers register themselves with pytree on import; importing that
    # trusted, installed package (never code from the file) makes them known.
    for type_name in json.loads(text)[1:] and _type_names(json.loads(text)[1]):
        module = type_name.rsplit(".", 1)[0]
        if module.startswith("transformers."):
            try:
                importlib.import_module(module)
            except ImportError:
                pass
    try:
        return pytree.treespec_loads(text)
    except (KeyError, ValueError, NotImplementedError) as e:
        raise ArtifactError(f"{path}: its input/output structure uses a type not registered here ({e}); import "
                            f"the module that defines it before archfit.load") from None


def _type_names(spec: dict) -> list[str]:
    names = [spec["type"]] if spec.get("type") else []
    for child in spec.get("children_spec", []):
        names += _type_names(child)
    return names


def _load_module(path: Path, manifest: dict, entry: dict, blobs: dict[str, bytes], target, shared: dict,
                 in_spec, out_spec) -> CompiledModule:
    """One static-shape module. `shared` maps file digests to what was already loaded from them,
    so weights and engines that several buckets hold in common exist once in memory too."""
    from safetensors.torch import load as load_tensors

    prefix = entry["prefix"]

    def once(name: str, make):
        digest = manifest["files"][name]
        if digest not in shared:
            shared[digest] = make(blobs[name])
        return shared[digest]

    attributes: dict = dict(once(f"{prefix}host_weights.safetensors", load_tensors))
    for e in entry["engines"]:
        try:
            if "parts" in e:
                engine = target.load({part: blobs[file] for part, file in e["parts"].items()})
            else:
                engine = once(e["file"], target.load)
        except Exception as err:  # noqa: BLE001 - a backend refusing its blob becomes one line
            msg = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ArtifactError(
                f"{path}: {target.backend} cannot load engine {e['module']} ({msg}); it was saved with "
                f"{manifest['versions']}: compile again with this machine's versions"
            ) from None
        dtypes = [getattr(torch, d) for d in e["out_dtypes"]]
        attributes[e["module"]] = EngineModule(engine, e["index"], target.name, dtypes)
    gm = graph_from_json(json.loads(blobs[f"{prefix}host.json"]), attributes)
    hand_over_if_alone(gm)
    inputs = tuple(TensorSpec(i["name"], tuple(i["shape"]), getattr(torch, i["dtype"])) for i in entry["inputs"])
    return CompiledModule(gm, in_spec, out_spec, inputs, target.name, manifest["precision"],
                          emulated=manifest["emulated"])


def _load_component(path: Path, manifest: dict, entry: dict, blobs: dict[str, bytes], target, shared: dict):
    in_spec, out_spec = _treespec(entry["in_spec"], path), _treespec(entry["out_spec"], path)
    entries = entry.get("modules") or [{"prefix": "", "inputs": entry["inputs"], "engines": entry["engines"]}]
    modules = [_load_module(path, manifest, e, blobs, target, shared, in_spec, out_spec) for e in entries]
    buckets = entry.get("buckets")
    if not buckets:
        return modules[0]
    choice = BucketChoice(**{**buckets["choice"], "boundaries": tuple(buckets["choice"]["boundaries"])}) \
        if buckets["choice"] else None
    return BucketedModule(dict(zip(buckets["sizes"], modules)), Padding.from_dict(buckets["padding"]), choice,
                          tuple(tuple(s) for s in buckets["safety"]))


def _load_components(path: Path, manifest: dict, blobs: dict[str, bytes], target, shared: dict) -> dict:
    return {name: _load_component(path, manifest, c, blobs, target, shared)
            for name, c in manifest["components"].items()}


def _load_seq2seq(path: Path, manifest: dict, blobs: dict[str, bytes], target, shared: dict):
    from transformers import GenerationConfig

    from .generation import Seq2SeqModule

    parts = _load_components(path, manifest, blobs, target, shared)
    steps = {int(name.removeprefix("step_")): m for name, m in parts.items() if name.startswith("step_")}
    g = manifest["generation"]
    return Seq2SeqModule(parts["encoder"], steps, GenerationConfig.from_dict(g["config"]), g["max_new_tokens"],
                         g["source_len"])


def load(path: str | os.PathLike, model: torch.nn.Module | None = None):
    """Load a file written by archfit.save. Needs the backend, not the compiler or model code,
    except for files of models that could not be captured whole (manifest "attach"): their
    compiled regions are attached to `model`, whose own Python runs the rest."""
    path = Path(path)
    manifest, blobs = _read(path)
    if any(op.startswith("archfit_zoo::") for op in manifest.get("custom_ops", [])):
        importlib.import_module("archfit.zoo")  # archfit's own example ops, from this installed package
    try:
        target = get_target(manifest["target"])
    except TargetError as e:
        raise ArtifactError(f"{path} needs target {manifest['target']!r} (backend {manifest.get('backend')!r}), "
                            f"which is not usable here: {e.args[0]}") from None
    shared: dict = {}  # file digest -> what was loaded from it, so common parts exist once in memory
    kind = manifest.get("kind", "module")
    if kind == "seq2seq":
        module = _load_seq2seq(path, manifest, blobs, target, shared)
    elif kind == "attached":
        from .regions import attach, plan_from_dict

        if model is None:  # say so before loading any engine
            attach(manifest["attach"], None, {}, path, None)
        regions = _load_components(path, manifest, blobs, target, shared)
        module = attach(manifest["attach"], model, regions, path, plan_from_dict(manifest["attach"]["plan"]))
    elif kind == "module":
        module = _load_component(path, manifest, manifest, blobs, target, shared)
    else:
        raise ArtifactError(f"{path} holds a {kind!r} model, which this archfit ({__version__}) cannot load; upgrade "
                            f"archfit")
    module.manifest = manifest
    return module
