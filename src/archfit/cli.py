"""`archfit` command line: maps commands onto the pipeline, prints one line on error."""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make a PyTorch model fit an inference accelerator.")
cache_app = typer.Typer(help="The on-disk compile cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

MODEL_HELP = ("A built-in model name (see `archfit models`), path/to/file.py:function returning "
              "(model, example_inputs), or a torch.export program saved as .pt2.")


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1)


def _emit(data) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@contextmanager
def _progress(enabled: bool):
    """A status line with elapsed time on a terminal; silent in pipes and CI."""
    if not (enabled and sys.stderr.isatty() and not os.environ.get("CI")):
        yield None
        return
    from rich.console import Console

    console = Console(stderr=True)
    start = time.perf_counter()
    with console.status("starting") as status:
        yield lambda msg: status.update(f"{msg}  [{time.perf_counter() - start:.0f} s]")


@app.command()
def analyze(model: str = typer.Argument(..., help=MODEL_HELP),
            target: List[str] = typer.Option(["openvino", "onnxruntime"], "--target", "-t", help="Target(s) to check."),
            precision: Optional[str] = typer.Option(None, help="fp32 or bf16 (default: each target's own)."),
            force_cpu: List[str] = typer.Option([], "--force-cpu", help="Op or node name to keep on the CPU."),
            tiny: bool = typer.Option(False, help="Use the tiny variant of a built-in model."),
            as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Fit report per target, without compiling."""
    from . import ArchfitError, analyze as run_analyze
    from .models import load_model

    try:
        mod, inputs, name = load_model(model, tiny)
        result = run_analyze(mod, inputs, targets=target, precision=precision, force_cpu=force_cpu, name=name)
    except ArchfitError as e:
        _fail(e)
    _emit(result.to_dict()) if as_json else typer.echo(result.to_text())


@app.command("compile")
def compile_(model: str = typer.Argument(..., help=MODEL_HELP),
             output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the compiled model here."),
             target: str = typer.Option("openvino", "--target", "-t"),
             precision: Optional[str] = typer.Option(None, help="fp32 or bf16 (auto-casts matmul and convolution); "
                                                                "default: the target's own."),
             force_cpu: List[str] = typer.Option([], "--force-cpu", help="Op or node name to keep on the CPU."),
             require_full: bool = typer.Option(False, help="Fail unless every op runs on the target."),
             min_partition_size: Optional[int] = typer.Option(None, help="Smallest partition, in compute ops "
                                                                         "(default: the target's own)."),
             no_cache: bool = typer.Option(False, "--no-cache", help="Do not use the compile cache."),
             tiny: bool = typer.Option(False, help="Use the tiny variant of a built-in model."),
             vary: List[str] = typer.Option([], "--vary", help="NAME:DIM of an input dim that varies (repeat for "
                                                               "inputs tied to the same size)."),
             buckets: Optional[str] = typer.Option(None, help="Bucket sizes to compile, e.g. 64,128,384."),
             lengths: Optional[Path] = typer.Option(None, help="Sizes seen in production, to choose buckets from: a "
                                                               "JSON list of sizes, or {\"counts\": [...], "
                                                               "\"lengths_start_at\": 1}."),
             max_buckets: int = typer.Option(4, help="With --lengths: how many buckets at most."),
             pad: List[str] = typer.Option([], "--pad", help="NAME=VALUE: the pad value of an input (default 0)."),
             dynamic_batch: bool = typer.Option(False, help="Accept any batch size in dim 0 (split / pad)."),
             generate: bool = typer.Option(False, "--generate", help="Seq2seq models: compile for generation "
                                                                     "(encoder per source bucket, decoder step "
                                                                     "with a static key/value cache)."),
             source_buckets: str = typer.Option("16,32,64", help="With --generate: source-length buckets."),
             max_new_tokens: int = typer.Option(64, help="With --generate: length of the decoder cache."),
             num_beams: int = typer.Option(1, help="With --generate: most beams generate will be asked for."),
             as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Compile for a target, validate against eager PyTorch, compare latency, optionally save."""
    import torch

    from . import ArchfitError, save, trace
    from .capture import normalize_inputs
    from .models import load_model
    from .timing import median_seconds

    if generate:
        return _compile_seq2seq(model, tiny, output, target, precision, source_buckets, max_new_tokens, num_beams,
                                not no_cache, as_json)
    try:
        mod, inputs, name = load_model(model, tiny)
        spec = _buckets(vary, buckets, lengths, max_buckets, pad)
        with _progress(not as_json) as progress:
            compiled = trace(mod, inputs, target=target, precision=precision, force_cpu=force_cpu,
                             require_full=require_full, min_partition_size=min_partition_size,
                             cache=not no_cache, progress=progress, name=name, buckets=spec,
                             dynamic_batch=dynamic_batch)
        if output is not None:
            save(compiled, output)
    except ArchfitError as e:
        _fail(e)
    args, kwargs = normalize_inputs(inputs)
    with torch.no_grad():
        eager_ms = median_seconds(lambda: mod(*args, **kwargs), budget=1.0) * 1e3
        compiled_ms = median_seconds(lambda: compiled(*args, **kwargs), budget=1.0) * 1e3
    if as_json:
        _emit(compiled.report.to_dict() | {"latency_ms": {"eager": eager_ms, "compiled": compiled_ms},
                                           "output": str(output) if output else None})
        return
    typer.echo(compiled.report.to_text())
    if hasattr(compiled, "summary"):
        typer.echo(compiled.summary())
    typer.echo(f"latency (median, batch as given): eager PyTorch {eager_ms:.3f} ms, archfit {compiled.target} "
               f"{compiled_ms:.3f} ms, speedup {eager_ms / compiled_ms:.2f}x")
    if output is not None:
        typer.echo(f"saved {output} ({output.stat().st_size / 2**20:.1f} MiB)")


def _compile_seq2seq(model: str, tiny: bool, output, target: str, precision, source_buckets: str, max_new_tokens: int,
                     num_beams: int, cache: bool, as_json: bool) -> None:
    import torch

    from . import ArchfitError, save, trace_seq2seq
    from .errors import InputError
    from .models import load_model
    from .timing import median_seconds

    try:
        mod, inputs, _name = load_model(model, tiny)
        hf = getattr(mod, "model", mod)  # the zoo wraps seq2seq models as one decoder step
        try:
            buckets = tuple(int(x) for x in source_buckets.split(","))
        except ValueError:
            raise InputError(f"--source-buckets {source_buckets!r} must be sizes like 16,32,64") from None
        with _progress(not as_json) as progress:
            compiled = trace_seq2seq(hf, target, source_buckets=buckets, num_beams=num_beams,
                                     max_new_tokens=max_new_tokens, precision=precision, cache=cache,
                                     progress=progress)
        if output is not None:
            save(compiled, output)
    except ArchfitError as e:
        _fail(e)
    ids = inputs["input_ids"] if isinstance(inputs, dict) else inputs[0]
    n = min(max_new_tokens, 32)
    kw = dict(max_new_tokens=n, min_new_tokens=n)  # same work for both: every call makes n tokens
    with torch.no_grad():
        same = bool(torch.equal(compiled.generate(ids, **kw), hf.generate(ids, **kw)))
        eager_ms = median_seconds(lambda: hf.generate(ids, **kw), budget=2.0) * 1e3
        compiled_ms = median_seconds(lambda: compiled.generate(ids, **kw), budget=2.0) * 1e3
    if as_json:
        _emit(compiled.report.to_dict() | {"greedy_ms": {"eager": eager_ms, "compiled": compiled_ms},
                                           "same_tokens": same, "output": str(output) if output else None})
        return
    typer.echo(compiled.report.to_text())
    typer.echo(compiled.summary())
    typer.echo(f"greedy generation of {n} tokens from {ids.shape[1]} source tokens: eager transformers "
               f"{eager_ms:.1f} ms, archfit {compiled.target} {compiled_ms:.1f} ms ({eager_ms / compiled_ms:.2f}x, "
               f"{n / compiled_ms * 1e3:.0f} tokens/s), same tokens: {'yes' if same else 'NO'}")
    if output is not None:
        typer.echo(f"saved {output} ({output.stat().st_size / 2**20:.1f} MiB)")


def _buckets(vary: list, sizes: str | None, lengths: Path | None, max_buckets: int, pad: list):
    """--vary/--buckets/--lengths/--pad as an archfit.Buckets (None when nothing varies)."""
    from . import Buckets
    from .errors import InputError

    if not vary:
        if sizes or lengths or pad:
            raise InputError("--buckets, --lengths and --pad need --vary NAME:DIM naming the input dims that vary")
        return None
    dims, pad_values = {}, {}
    for item in vary:
        name, _, dim = item.rpartition(":")
        if not name or not dim.lstrip("-").isdigit():
            raise InputError(f"--vary {item!r} must be NAME:DIM, e.g. input_ids:1")
        dims[name] = int(dim)
    for item in pad:
        name, _, value = item.partition("=")
        try:
            pad_values[name] = float(value)
        except ValueError:
            raise InputError(f"--pad {item!r} must be NAME=NUMBER") from None
    if (sizes is None) == (lengths is None):
        raise InputError("with --vary, give either --buckets SIZES or --lengths FILE")
    try:
        if sizes is not None:
            return Buckets(dims, sizes=tuple(int(x) for x in sizes.split(",")), pad_values=pad_values)
        data = json.loads(lengths.read_text())
        if isinstance(data, list):
            return Buckets(dims, sample=tuple(int(x) for x in data), max_buckets=max_buckets, pad_values=pad_values)
        start = int(data.get("lengths_start_at", 1))
        return Buckets(dims, histogram=(0.0,) * (start - 1) + tuple(data["counts"]), max_buckets=max_buckets,
                       pad_values=pad_values)
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise InputError(f"bucket options: {type(e).__name__}: {e}") from None


def _read_tensor(name: str, path: str):
    import numpy as np
    import torch

    from .errors import InputError

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
        tiny: bool = typer.Option(False, help="With --model: its tiny variant.")):
    """Run a saved model on inputs from files; writes one file per output."""
    import importlib

    import numpy as np
    import torch
    from torch.utils import _pytree as pytree

    from . import ArchfitError, load
    from .capture import _leaf_names, normalize_inputs
    from .errors import InputError
    from .models import load_model

    try:
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
        if getattr(module, "manifest", {}).get("kind") == "seq2seq":
            raise InputError(f"{file} is a seq2seq generator: use `archfit generate {file} --ids ...`")
        if example is not None:  # the model's own input structure; leaves named as capture names them
            args, kwargs = normalize_inputs(example)
            leaves, in_spec = pytree.tree_flatten((args, kwargs))
            names = _leaf_names(attach_to, args, kwargs)
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
    except ArchfitError as e:
        _fail(e)
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


@app.command("generate")
def generate_(file: Path = typer.Argument(..., help="A file written by `archfit compile --generate -o`."),
              ids: List[str] = typer.Option(..., "--ids", help="Source token ids, comma-separated; repeat for a "
                                                               "batch (shorter ones are padded and masked)."),
              max_new_tokens: Optional[int] = typer.Option(None, help="As in transformers' generate."),
              num_beams: Optional[int] = typer.Option(None, help="As in transformers' generate."),
              num_return_sequences: Optional[int] = typer.Option(None, help="As in transformers' generate.")):
    """Generate with a saved seq2seq file; prints one line of token ids per sequence."""
    import torch

    from . import ArchfitError, load
    from .errors import InputError

    try:
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
    except ArchfitError as e:
        _fail(e)
    for row in out.tolist():
        typer.echo(",".join(map(str, row)))


@app.command()
def inspect(file: Path = typer.Argument(..., help="A file written by `archfit compile -o`."),
            as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """What a saved file holds: signature, partitions, buckets, versions, report."""
    from . import ArchfitError
    from .package import read_manifest

    try:
        manifest, report = read_manifest(file)
    except ArchfitError as e:
        _fail(e)
    if as_json:
        _emit({k: v for k, v in manifest.items() if k != "files"} | {"size_bytes": file.stat().st_size})
        return
    emulated = " (EMULATED on the CPU)" if manifest["emulated"] else ""
    typer.echo(f"{file}: archfit file format {manifest['format_version']}, {file.stat().st_size / 2**20:.1f} MiB")
    typer.echo(f"target: {manifest['target']} on {manifest['device']}{emulated}, precision {manifest['precision']}")
    typer.echo("versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()))
    kind = manifest.get("kind", "module")
    if kind == "attached":
        a = manifest["attach"]
        typer.echo(f"needs the model's Python code: {a['class']} (its compiled regions attach to it: "
                   f"archfit.load(path, model=...), CLI: archfit run FILE --model NAME)")
        typer.echo(f"compiled regions: {', '.join(a['plan']['regions'])}")
        for h in a["plan"]["host"]:
            typer.echo(f"host region: {h['module']}: {h['reason']}" + (f" at {h['source']}" if h["source"] else ""))
    elif kind == "seq2seq":
        g = manifest["generation"]
        steps = [c for c in manifest["components"] if c.startswith("step_")]
        typer.echo(f"seq2seq generator: source buckets {manifest['components']['encoder']['buckets']['sizes']}, "
                   f"decoder step rows {', '.join(c.removeprefix('step_') for c in steps)}, key/value cache "
                   f"{g['max_new_tokens']} tokens (archfit generate FILE --ids ...)")
    else:
        typer.echo("inputs: " + ", ".join(f"{i['name']}{i['shape']}:{i['dtype']}" for i in manifest["inputs"]))
    typer.echo(f"engines: {len(manifest['engines'])} ({', '.join(e['module'] for e in manifest['engines'])})")
    b = manifest.get("buckets")
    if kind == "module" and b:
        dims = ", ".join(f"{k}[{v}]" for k, v in b["padding"]["dims"].items())
        batch = ", dynamic batch" if b["padding"].get("batch_follow") else ""
        typer.echo(f"buckets: {', '.join(map(str, b['sizes']))} over {dims}{batch}" if dims else f"buckets: none{batch}")
    elif kind == "module":
        typer.echo("buckets: none (fixed shapes)")
    needs = ", ".join(manifest["custom_ops"]) or "none"
    typer.echo(f"custom ops needed at load: {needs}")
    if report:
        typer.echo("")
        typer.echo(report)


@app.command("bench")
def bench_(model: str = typer.Argument(..., help=MODEL_HELP + " Or a file written by `archfit compile -o`."),
           target: List[str] = typer.Option(["openvino", "onnxruntime"], "--target", "-t", help="archfit target(s)."),
           precision: List[str] = typer.Option(["fp32", "bf16"], "--precision", help="Precision(s) to run archfit at."),
           arm: List[str] = typer.Option([], "--arm", help="Only the arms whose name contains this (repeatable)."),
           peers: bool = typer.Option(True, help="Also run the peers (torch.compile, ONNX Runtime and OpenVINO "
                                                 "used directly, ...)."),
           rounds: int = typer.Option(5, help="Rounds; every arm runs once per round, interleaved."),
           tiny: bool = typer.Option(False, help="Use the tiny variant of a built-in model."),
           as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """archfit against eager PyTorch and the other ways to run the model, side by side."""
    import torch

    from . import ArchfitError, bench, load
    from .models import load_model

    try:
        if model.endswith(".archfit"):
            module = load(model)
            flat = [torch.zeros(s.shape, dtype=s.dtype) for s in module.inputs]
            args, kwargs = torch.utils._pytree.tree_unflatten(flat, module.in_spec)
            builders = {f"archfit {module.target} {module.precision} (loaded)":
                        (module.precision, lambda: (lambda: module(*args, **kwargs)))}
            flops, peaks = 0, {"fp32": float("nan"), "bf16": float("nan")}  # no model here to count or compare
        else:
            mod, inputs, _name = load_model(model, tiny)
            mod.eval()
            builders = bench.arms(mod, inputs, targets=target, precisions=precision, peers=peers)
            flops = bench.model_flops(mod, inputs)
            peaks = {"fp32": bench.matmul_peak_gflops(torch.float32), "bf16": bench.matmul_peak_gflops(torch.bfloat16)}
        if arm:
            builders = {k: v for k, v in builders.items() if k == "eager PyTorch" or any(a in k for a in arm)}
        with _progress(not as_json) as progress:
            results = bench.run_arms(builders, rounds=rounds, log=progress)
        rows = bench.table(results, flops, peaks)
    except ArchfitError as e:
        _fail(e)
    if as_json:
        _emit({"model": model, "gflop": flops / 1e9, "matmul_peak_gflops": peaks, "rows": rows})
        return
    typer.echo(f"{model}: {flops / 1e9:.3f} GFLOP per call; matmul peak here: fp32 {peaks['fp32']:.0f}, "
               f"bf16 {peaks['bf16']:.0f} GFLOP/s; {torch.get_num_threads()} threads")
    typer.echo(bench.render(rows))


@app.command()
def targets():
    """Targets known to archfit and whether each is usable here."""
    from .targets import list_targets

    for t in list_targets():
        why = t.unavailable()
        status = "available" if not why else f"unavailable: {why}"
        typer.echo(f"{t.name:12} {t.device:12} {status}  - {t.description}")


@app.command()
def models():
    """Built-in models (use --tiny for the test-size variant)."""
    from . import zoo

    for n in zoo.names():
        m = zoo.get(n)
        typer.echo(f"{n:16} {m.family:10} {m.description}")


@cache_app.command("clear")
def cache_clear():
    """Delete every cached engine."""
    from . import cache

    typer.echo(f"removed {cache.clear()} cached engine(s) from {cache.cache_dir()}")


@cache_app.command("where")
def cache_where():
    """Print the cache directory (ARCHFIT_CACHE_DIR; ARCHFIT_CACHE=0 disables it)."""
    from . import cache

    typer.echo(str(cache.cache_dir() or "disabled (ARCHFIT_CACHE=0)"))


def main(argv: Optional[list] = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - a bug of ours still gets one line; the traceback on request
        if os.environ.get("ARCHFIT_DEBUG"):
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        typer.echo(f"error: internal: {type(e).__name__}: {first} (run with ARCHFIT_DEBUG=1 for the traceback "
                   f"and please report it)", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
