"""Commands on saved files: run, generate, inspect."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from .app import app, emit, fail

def _read_tensor(name: str, path: str):
    import numpy as np
    import torch

    from ..errors import InputError

    if not os.path.isfile(path):
        raise InputError(f"input {name!r}: file {path!r} does not exist")
    try:
        if path.endswith(".npy"):
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if path.endswith(".pt"):
            value = torch.load(path, weights_only=True)  # tensors only: no code runs
            if not isinstance(value, torch.Tensor):
                raise InputError(f"input {name!r}: {path} holds a {type(value).__name__}, expected one tensor")
            return value
    except (ValueError, OSError, RuntimeError) as e:
        raise InputError(f"input {name!r}: cannot read {path} ({type(e).__name__}: {str(e)[:120]})") from None
    raise InputError(f"input {name!r}: {path} must be a .npy or .pt file")


@app.command()
def run(file: Path = typer.Argument(..., help="A file written by `archfit compile -o`."),
        input: List[str] = typer.Option([], "--input", "-i", help="NAME=PATH (.npy or .pt), one per input."),
        output_dir: Path = typer.Option(Path("."), "--output-dir", "-d", help="Where outputs are written."),
        fmt: str = typer.Option("npy", "--format", help="npy or pt."),
        imports: List[str] = typer.Option([], "--import", help="Module to import first (one defining a custom op "
                                                                "the file needs)."),
        model: Optional[str] = typer.Option(None, "--model", help="For files that need the model's Python code "
                                                                   "(see `inspect`): the model, as for compile. "
                                                                   "Without --input, runs its example inputs."),
        tiny: bool = typer.Option(False, help="With --model: its tiny variant."),
        check_finite: bool = typer.Option(True, help="Refuse inputs holding NaN or Inf (targets propagate them "
                                                     "differently)."),
        batch_file: Optional[Path] = typer.Option(None, "--batch-file", help="Packed files: JSON lines, one sequence "
                                                  "per line ({\"input_ids\": [...], ...} or a list of ids); "
                                                  "outputs are written per output name, in line order.")):
    """Run a saved model on inputs from files; writes one file per output."""
    import importlib

    import numpy as np
    import torch
    from torch.utils import _pytree as pytree

    from .. import load
    from ..core.capture import leaf_names, normalize_inputs
    from ..errors import InputError
    from .models import load_model

    for name in imports:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise InputError(f"--import {name}: {e}") from None
    given = {}
    for item in input:
        if "=" not in item:
            raise InputError(f"--input {item!r} must be NAME=PATH")
        key, path = item.split("=", 1)
        given[key] = _read_tensor(key, path)
    attach_to, example = None, None
    if model is not None:
        attach_to, example, _name = load_model(model, tiny)
    module = load(file, model=attach_to)
    module.check_finite = check_finite
    ids = module.speak_torch()  # an ONNX/TF/MXNet model: run gives torch tensors by name
    given = {k: v.long() if k in ids else v for k, v in given.items()}
    if getattr(module, "manifest", {}).get("kind") == "seq2seq":
        raise InputError(f"{file} is a seq2seq generator: use `archfit generate {file} --ids ...`")
    if batch_file is not None:
        return _run_batch_file(module, file, batch_file, output_dir, fmt)
    if module.kind == "packed":
        raise InputError(f"{file} is packed: give its sequences with --batch-file FILE, one per line")
    if example is not None:  # the model's own input structure; leaves named as capture names them
        args, kwargs = normalize_inputs(example)
        leaves, in_spec = pytree.tree_flatten((args, kwargs))
        names = leaf_names(attach_to, args, kwargs)
        defaults = dict(zip(names, leaves)) if not given else {}
    else:
        in_spec, names, defaults = module.in_spec, [s.name for s in module.inputs], {}
    given = defaults | given
    missing, extra = [n for n in names if n not in given], [n for n in given if n not in names]
    if missing or extra:
        raise InputError(f"inputs must be exactly {', '.join(names)}; missing: {', '.join(missing) or '-'}, "
                         f"unknown: {', '.join(extra) or '-'}")
    args, kwargs = pytree.tree_unflatten([given[n] for n in names], in_spec)
    outputs = module(*args, **kwargs)
    output_dir.mkdir(parents=True, exist_ok=True)
    flat, _ = pytree.tree_flatten_with_path(outputs)
    for path, tensor in flat:
        # '0.boxes' for out[0]['boxes'], 'last_hidden_state' for out.last_hidden_state
        name = ".".join(str(next(getattr(k, a) for a in ("key", "idx", "name") if hasattr(k, a))) for k in path)
        name = name or "output"
        dest = output_dir / f"{name}.{fmt}"
        if fmt == "pt":
            torch.save(tensor, dest)
        else:
            np.save(dest, tensor.numpy())
        typer.echo(f"{dest}  {tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}")


def _run_batch_file(module, file: Path, batch_file: Path, output_dir: Path, fmt: str) -> None:
    """Every line's outputs, packed as they go: per output name one array [lines, ...] when all
    lines' outputs have one shape (pooled vectors), else one archive of per-line arrays."""
    import numpy as np

    from ..errors import InputError

    if module.kind != "packed":
        raise InputError(f"--batch-file needs a packed file (archfit compile --pack); {file} is a {module.kind!r} one")
    if fmt != "npy":
        raise InputError("--batch-file writes .npy/.npz files: leave --format at npy")
    try:
        lines = [json.loads(line) for line in batch_file.read_text().splitlines() if line.strip()]
    except (OSError, ValueError, RecursionError) as e:
        raise InputError(f"--batch-file {batch_file}: {type(e).__name__}: {str(e)[:120]}") from None
    results = list(module.map(lines))
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in (results[0] if results else {}):
        arrays = [r[name][0].numpy() for r in results]
        if len({a.shape for a in arrays}) == 1:
            dest = output_dir / f"{name}.npy"
            np.save(dest, np.stack(arrays))
            shape = (len(arrays), *arrays[0].shape)
        else:
            dest = output_dir / f"{name}.npz"
            np.savez(dest, *arrays)  # arr_0, arr_1, ...: one per line
            shape = (len(arrays), "n", *arrays[0].shape[1:])
        typer.echo(f"{dest}  {tuple(shape)} {str(results[0][name].dtype).removeprefix('torch.')}")
    if not results:
        typer.echo(f"{batch_file}: no sequences")


@app.command("generate")
def generate_(file: Path = typer.Argument(..., help="A file written by `archfit compile --generate -o`."),
              ids: List[str] = typer.Option(..., "--ids", help="Source token ids, comma-separated; repeat for a "
                                                               "batch (shorter ones are padded and masked)."),
              max_new_tokens: Optional[int] = typer.Option(None, help="As in transformers' generate."),
              num_beams: Optional[int] = typer.Option(None, help="As in transformers' generate."),
              num_return_sequences: Optional[int] = typer.Option(None, help="As in transformers' generate.")):
    """Generate with a saved seq2seq file; prints one line of token ids per sequence."""
    import torch

    from .. import load
    from ..errors import InputError

    module = load(file)
    if getattr(module, "manifest", {}).get("kind") != "seq2seq":
        raise InputError(f"{file} is not a seq2seq generator (compile with --generate); use `archfit run`")
    try:
        rows = [[int(x) for x in line.split(",")] for line in ids]
    except ValueError:
        raise InputError("--ids must be comma-separated integers, e.g. --ids 37,215,9") from None
    width = max(len(r) for r in rows)
    pad = module.generation_config.pad_token_id or 0
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    kwargs = {k: v for k, v in dict(max_new_tokens=max_new_tokens, num_beams=num_beams,
                                    num_return_sequences=num_return_sequences).items() if v is not None}
    out = module.generate(input_ids, attention_mask=mask, **kwargs)
    for row in out.tolist():
        typer.echo(",".join(map(str, row)))


_CONTROL = {c: None for c in range(32) if c not in (9, 10)} | {127: None}


def _printable(text: str) -> str:
    """Text from a file as shown on a terminal: control characters (escape sequences) dropped."""
    return str(text).translate(_CONTROL)


def _describe(file: Path, manifest: dict) -> list[str]:
    emulated = " (EMULATED on the CPU)" if manifest["emulated"] else ""
    lines = [f"{file}: archfit file format {manifest['format_version']}, {file.stat().st_size / 2**20:.1f} MiB",
             f"target: {manifest['target']} on {manifest['device']}{emulated}, precision {manifest['precision']}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items())]
    kind, meta, components = manifest["kind"], manifest["meta"], manifest["components"]
    if kind == "attached":
        lines.append(f"needs the model's Python code: {meta['class']} (its compiled regions attach to it: "
                     f"archfit.load(path, model=...), CLI: archfit run FILE --model NAME)")
        lines.append(f"compiled regions: {', '.join(meta['regions'])}")
        lines += [f"host region: {h['module']}: {h['reason']}" + (f" at {h['source']}" if h["source"] else "")
                  for h in meta["plan"]["host"]]
    elif kind == "seq2seq":
        steps = [c for c in components if c.startswith("step_")]
        lines.append(f"seq2seq generator: source buckets {components['encoder']['buckets']['sizes']}, decoder step "
                     f"rows {', '.join(c.removeprefix('step_') for c in steps)}, key/value cache "
                     f"{meta['max_new_tokens']} tokens (archfit generate FILE --ids ...)")
    else:
        lines.append("inputs: " + ", ".join(f"{i['name']}{i['shape']}:{i['dtype']}" for i in manifest["inputs"]))
        b = components["main"]["buckets"]
        if b:
            dims = ", ".join(f"{k}[{v}]" for k, v in b["padding"]["dims"].items())
            batch = ", dynamic batch" if b["padding"].get("batch_follow") else ""
            lines.append(f"buckets: {', '.join(map(str, b['sizes']))} over {dims}{batch}" if dims
                         else f"buckets: none{batch}")
        else:
            lines.append("buckets: none (fixed shapes)")
        if kind == "packed":
            p = meta.get("packing") if isinstance(meta.get("packing"), dict) else {}
            lines.append(f"packed: several sequences per row, rows of {str(p.get('sizes'))[:80]}, strategy "
                         f"{str(p.get('strategy'))[:20]}, outputs {str(p.get('outputs'))[:120]}, pool "
                         f"{str(p.get('pool'))[:20]} (archfit run FILE --batch-file seqs.jsonl -d out/)")
    lines.append(f"engines: {len(manifest['engines'])} ({', '.join(e['module'] for e in manifest['engines'])})")
    lines.append(f"custom ops needed at load: {', '.join(manifest['custom_ops']) or 'none'}")
    return lines


@app.command()
def inspect(file: Path = typer.Argument(..., help="A file written by `archfit compile -o`."),
            as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """What a saved file holds: signature, partitions, buckets, versions, report."""
    from ..artifact import read_manifest
    from ..errors import ArtifactError

    try:
        manifest, report = read_manifest(file)
        lines = [] if as_json else _describe(file, manifest)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        fail(ArtifactError(f"{file}: manifest is malformed ({type(e).__name__}); the file was not written by "
                           f"archfit.save, or is damaged"))
    if as_json:
        emit({k: v for k, v in manifest.items() if k != "files"} | {"size_bytes": file.stat().st_size})
        return
    typer.echo(_printable("\n".join(lines + ([""] + [report] if report else []))))
