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
                                                  "outputs are written per output name, in line order."),
        text: List[str] = typer.Option([], "--text", help="Files compiled from a directory with a tokenizer: a text "
                                                          "to answer (repeatable); prints one JSON line per text."),
        text_file: Optional[Path] = typer.Option(None, "--text-file", help="As --text: one text per line of this "
                                                                            "file."),
        image: List[Path] = typer.Option([], "--image", help="Files compiled from an image-classification or object-detection "
                                                             "directory: an image file to classify (repeatable); "
                                                             "prints one JSON line per image.")):
    """Run a saved model on inputs from files; writes one file per output. Files that carry a
    tokenizer take texts (--text, --text-file), files with an image processor take images (--image);
    both print the task's answers."""
    from .. import load
    from ..errors import InputError
    from .models import load_model

    _import_modules(imports)
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
    if text or text_file is not None:
        return _run_texts(module, file, list(text), text_file)
    if image:
        if module.image is None:
            raise InputError(f"{file} takes tensors (-i NAME=PATH): it was not compiled from an image directory "
                             f"with its image processor")
        for path, answer in zip(image, module(list(image))):
            typer.echo(json.dumps({"image": str(path)} | (answer if isinstance(answer, dict) else
                                                           {module.image.answer_name: answer})))
        return
    ids = module.take_torch_tensors()  # an ONNX/TF/MXNet model: run gives torch tensors by name
    given = {k: v.long() if k in ids else v for k, v in given.items()}
    if module.takes == "generation":
        raise InputError(f"{file} is a {module.kind} generator: use `archfit generate {file} --ids ...`")
    if batch_file is not None:
        return _run_batch_file(module, file, batch_file, output_dir, fmt)
    if module.takes == "sequences":
        raise InputError(f"{file} is {module.kind}: give its sequences with --batch-file FILE, one per line")
    args, kwargs = _call_inputs(module, given, attach_to, example)
    _write_outputs(module(*args, **kwargs), output_dir, fmt)


def _run_texts(module, file: Path, texts: list[str], text_file: Path | None) -> None:
    """One JSON line per text: the text and its answer (an embedding, a label and its score, ...)."""
    from ..errors import InputError
    from ..text.io import plain

    if module.text is None:
        raise InputError(f"{file} takes tensors (-i NAME=PATH): it was not compiled from a directory with a tokenizer")
    if text_file is not None:
        try:
            texts += [line.rstrip("\n") for line in text_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"--text-file {text_file}: {e}") from None
    for start in range(0, len(texts), 256):  # answers printed as they come, memory bounded
        chunk = texts[start:start + 256]
        for t, answer in zip(chunk, module.answer(chunk)):
            answer = plain(answer)
            typer.echo(json.dumps({"text": t} | (answer if isinstance(answer, dict) else
                                                 {module.text.answer_name: answer})))


def _import_modules(names: list[str]) -> None:
    import importlib

    from ..errors import InputError

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise InputError(f"--import {name}: {e}") from None


def _call_inputs(module, given: dict, model, example) -> tuple[tuple, dict]:
    """The call's arguments: the inputs given by name, structured as the file (or, for a file that
    attaches to the model's code, as the model's example inputs, which stand in for missing ones)."""
    from torch.utils import _pytree as pytree

    from ..core.capture import leaf_names, normalize_inputs
    from ..errors import InputError

    if example is not None:  # the model's own input structure; leaves named as capture names them
        args, kwargs = normalize_inputs(example)
        leaves, in_spec = pytree.tree_flatten((args, kwargs))
        names = leaf_names(model, args, kwargs)
        defaults = dict(zip(names, leaves)) if not given else {}
    else:
        in_spec, names, defaults = module.in_spec, [s.name for s in module.inputs], {}
    given = defaults | given
    missing, extra = [n for n in names if n not in given], [n for n in given if n not in names]
    if missing or extra:
        raise InputError(f"inputs must be exactly {', '.join(names)}; missing: {', '.join(missing) or '-'}, "
                         f"unknown: {', '.join(extra) or '-'}")
    return pytree.tree_unflatten([given[n] for n in names], in_spec)


def _write_outputs(outputs, output_dir: Path, fmt: str) -> None:
    """One file per output, named by its place in the output structure."""
    import numpy as np
    import torch
    from torch.utils import _pytree as pytree

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

    if module.takes != "sequences":
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
              ids: List[str] = typer.Option([], "--ids", help="Source token ids, comma-separated; repeat for a "
                                                              "batch (shorter ones are padded and masked)."),
              text: List[str] = typer.Option([], "--text", help="A source text (files compiled from a directory "
                                                                "with a tokenizer); repeat for a batch."),
              max_new_tokens: Optional[int] = typer.Option(None, help="As in transformers' generate."),
              num_beams: Optional[int] = typer.Option(None, help="As in transformers' generate."),
              num_return_sequences: Optional[int] = typer.Option(None, help="As in transformers' generate."),
              do_sample: bool = typer.Option(False, "--do-sample", help="Sample (decoder-only files), as in "
                                                                          "transformers' generate."),
              temperature: Optional[float] = typer.Option(None, help="With --do-sample."),
              top_k: Optional[int] = typer.Option(None, help="With --do-sample."),
              top_p: Optional[float] = typer.Option(None, help="With --do-sample."),
              seed: Optional[int] = typer.Option(None, help="With --do-sample: torch's seed, as "
                                                            "torch.manual_seed before model.generate.")):
    """Generate with a saved generation file (seq2seq or decoder-only); prints one line per sequence:
    the generated text with --text, else token ids."""
    import torch

    from .. import load
    from ..errors import InputError
    from ..seq2seq.loop import padded

    module = load(file)
    if module.takes != "generation":
        raise InputError(f"{file} is not a generator (compile with --generate); use `archfit run`")
    kwargs = {k: v for k, v in dict(max_new_tokens=max_new_tokens, num_beams=num_beams,
                                    num_return_sequences=num_return_sequences, temperature=temperature, top_k=top_k,
                                    top_p=top_p).items() if v is not None}
    if do_sample:
        kwargs["do_sample"] = True
    if seed is not None:
        torch.manual_seed(seed)
    if bool(text) == bool(ids):
        raise InputError("give the source as --text or as --ids, one of them")
    if text:
        for line in module.answer(list(text), **kwargs):
            typer.echo(line)
        return
    try:
        rows = [[int(x) for x in line.split(",")] for line in ids]
    except ValueError:
        raise InputError("--ids must be comma-separated integers, e.g. --ids 37,215,9") from None
    # a decoder-only batch is left-padded, as transformers expects; a seq2seq source right-padded
    input_ids, mask = padded(rows, module.generation_config.pad_token_id or 0, left=module.kind == "causal")
    out = module.generate(input_ids, attention_mask=mask, **kwargs)
    for row in out.tolist():
        typer.echo(",".join(map(str, row)))


_CONTROL = {c: None for c in range(32) if c not in (9, 10)} | {127: None}


def _printable(text: str) -> str:
    """Text from a file as shown on a terminal: control characters (escape sequences) dropped."""
    return str(text).translate(_CONTROL)


def _describe(file: Path, manifest: dict) -> list[str]:
    from ..core.kinds import kind_class

    emulated = " (EMULATED on the CPU)" if manifest["emulated"] else ""
    lines = [f"{file}: archfit file format {manifest['format_version']}, {file.stat().st_size / 2**20:.1f} MiB",
             f"target: {manifest['target']} on {manifest['device']}{emulated}, precision {manifest['precision']}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items())]
    kind = kind_class(manifest["kind"])
    lines += kind.describe_file(manifest) if kind is not None else [f"kind: {str(manifest['kind'])[:40]} (not "
                                                                      f"known to this archfit; upgrade archfit)"]
    lines.append(f"engines: {len(manifest['engines'])} ({', '.join(e['module'] for e in manifest['engines'])})")
    lines.append(f"custom ops needed at load: {', '.join(manifest['custom_ops']) or 'none'}")
    text = manifest.get("text")
    if isinstance(text, dict):
        what = "sentence embeddings" if text.get("embedding") else text.get("task")
        how = ("archfit generate --text" if str(text.get("task")).endswith("generation")
               else "archfit run --text, archfit serve takes BYTES")
        lines.append(f"text in: {what}, its tokenizer carried, texts up to {text.get('max_length')} tokens "
                     f"({'longer ones cut' if text.get('truncate') else 'longer ones refused'}): {how}")
    image = manifest.get("image")
    if isinstance(image, dict):
        labels = image.get("labels") if isinstance(image.get("labels"), list) else []
        lines.append(f"images in: {image.get('task')}, its image processor carried, {len(labels)} labels: "
                     f"archfit run --image")
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
