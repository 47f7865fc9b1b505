"""`archfit` command line: maps commands onto the pipeline, prints one line on error."""
from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Make a PyTorch model fit an inference accelerator.")

MODEL_HELP = "A built-in model name (see `archfit models`) or path/to/file.py:function returning (model, example_inputs)."


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1)


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
    typer.echo(json.dumps(result.to_dict(), indent=2, default=str) if as_json else result.to_text())


@app.command("compile")
def compile_(model: str = typer.Argument(..., help=MODEL_HELP),
             target: str = typer.Option("openvino", "--target", "-t"),
             precision: Optional[str] = typer.Option(None, help="fp32 or bf16 (auto-casts matmul and convolution); "
                                                                  "default: the target's own."),
             force_cpu: List[str] = typer.Option([], "--force-cpu", help="Op or node name to keep on the CPU."),
             require_full: bool = typer.Option(False, help="Fail unless every op runs on the target."),
             min_partition_size: Optional[int] = typer.Option(None, help="Smallest partition, in compute ops "
                                                                         "(default: the target's own)."),
             tiny: bool = typer.Option(False, help="Use the tiny variant of a built-in model."),
             as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Compile for a target, validate against eager PyTorch, and compare latency."""
    import torch

    from . import ArchfitError, trace
    from .capture import normalize_inputs
    from .timing import median_seconds

    from .models import load_model

    try:
        mod, inputs, name = load_model(model, tiny)
        compiled = trace(mod, inputs, target=target, precision=precision, force_cpu=force_cpu,
                         require_full=require_full, min_partition_size=min_partition_size, name=name)
    except ArchfitError as e:
        _fail(e)
    args, kwargs = normalize_inputs(inputs)
    with torch.no_grad():
        eager_ms = median_seconds(lambda: mod(*args, **kwargs), budget=1.0) * 1e3
        compiled_ms = median_seconds(lambda: compiled(*args, **kwargs), budget=1.0) * 1e3
    if as_json:
        out = compiled.report.to_dict() | {"latency_ms": {"eager": eager_ms, "compiled": compiled_ms}}
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    typer.echo(compiled.report.to_text())
    typer.echo(f"latency (median, batch as given): eager PyTorch {eager_ms:.3f} ms, archfit {target} "
               f"{compiled_ms:.3f} ms, speedup {eager_ms / compiled_ms:.2f}x")


@app.command()
def targets():
    """Targets known to archfit and whether each is usable here."""
    from .targets import list_targets

    for t in list_targets():
        why = t.unavailable()
        status = "available" if not why else f"unavailable: {why}"
        typer.echo(f"{t.name:14} {t.backend:12} {t.device:5} {status}  - {t.description}")


@app.command()
def models():
    """Built-in models (use --tiny for the test-size variant)."""
    from . import zoo

    for n in zoo.names():
        m = zoo.get(n)
        typer.echo(f"{n:16} {m.family:10} {m.description}")


def main(argv: Optional[list] = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
