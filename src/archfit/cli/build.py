"""Commands that build: analyze, compile (with buckets or for generation) and bench."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .app import LENGTH_HELP, MODEL_HELP, TASK_HELP, WEIGHTS_HELP, app, emit, fail, progress_line
from .options import buckets_of, packing_of, read_sets, with_batch

SHAPE_HELP = ("Model files (ONNX, SavedModel, MXNet symbol): NAME=1x3x224x224[:dtype] sets an input's example shape "
              "(repeat per input; MXNet symbols carry no shapes, so each input needs one).")
ACCURACY_HELP = ("A task gate deciding validation instead of the elementwise tolerance: detection, classification, "
                 "embedding or tokens, with bounds as NAME:key=value,... (e.g. detection:recall=0.98). Built-in "
                 "detectors declare detection.")
HTML_HELP = "Also write the report as one self-contained HTML page here (opens offline in any browser)."


def write_page(path: Path, page: str, say: bool) -> None:
    """Write the HTML report (its path was checked before any work)."""
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as e:
        fail(OSError(f"--html {path}: {e.strerror or e}; choose another path"))
    if say:
        typer.echo(f"wrote {path} ({len(page.encode()) / 1024:.0f} KiB): open it in a browser")

@app.command()
def analyze(model: str = typer.Argument(..., help=MODEL_HELP),
            target: List[str] = typer.Option(["openvino", "onnxruntime"], "--target", "-t", help="Target(s) to check."),
            precision: Optional[str] = typer.Option(None, help="fp32 or bf16 (default: each target's own)."),
            force_cpu: List[str] = typer.Option([], "--force-cpu", help="Op or node name to keep on the CPU."),
            tiny: bool = typer.Option(False, help="Use the tiny variant of a built-in model."),
            shape: List[str] = typer.Option([], "--shape", help=SHAPE_HELP),
            html: Optional[Path] = typer.Option(None, "--html", help=HTML_HELP),
            task: Optional[str] = typer.Option(None, "--task", help=TASK_HELP),
            length: Optional[int] = typer.Option(None, "--length", help=LENGTH_HELP),
            weights: Optional[str] = typer.Option(None, "--weights", help=WEIGHTS_HELP),
            as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Fit report per target, without compiling."""
    from .. import analyze as run_analyze
    from .models import load_model

    from ..artifact.container import check_output_path

    if html is not None:
        check_output_path(html)
    mod, inputs, name = load_model(model, tiny, shape, task, length, weights)
    result = run_analyze(mod, inputs, targets=target, precision=precision, force_cpu=force_cpu, name=name)
    emit(result.to_dict()) if as_json else typer.echo(result.to_text())
    if html is not None:
        write_page(html, result.to_html(), not as_json)


# compile's options, named here so that its signature reads as a list
_MODEL = typer.Argument(..., help=MODEL_HELP)
_OUTPUT = typer.Option(None, "--output", "-o", help="Write the compiled model here.")
_TARGET = typer.Option("openvino", "--target", "-t",
    help="A target, or auto: compile on every real target here, measure each, "
         "keep the fastest.")
_PRECISION = typer.Option(None, help="fp32, bf16 (auto-casts matmul and convolution) or "
    "auto (each precision this CPU computes in, measured); "
    "default: the target's own.")
_FORCE_CPU = typer.Option([], "--force-cpu", help="Op or node name to keep on the CPU.")
_REQUIRE_FULL = typer.Option(False, help="Fail unless every op runs on the target.")
_PAYOFF = typer.Option(True, help="Keep a partition on the target only if the whole model measures "
    "faster with it there; --no-payoff keeps every supported "
    "partition, as an accelerator SDK does.")
_MIN_PARTITION_SIZE = typer.Option(None, help="Smallest partition, in compute ops "
    "(default: the target's own).")
_NO_CACHE = typer.Option(False, "--no-cache", help="Do not use the compile cache.")
_TINY = typer.Option(False, help="Use the tiny variant of a built-in model.")
_SHAPE = typer.Option([], "--shape", help=SHAPE_HELP)
_VARY = typer.Option([], "--vary", help="NAME:DIM of an input dim that varies (repeat for "
    "inputs tied to the same size).")
_BUCKETS = typer.Option(None, help="Bucket sizes to compile, e.g. 64,128,384.")
_LENGTHS = typer.Option(None, help="Sizes seen in production, to choose buckets from: a "
    "JSON list of sizes, or {\"counts\": [...], "
    "\"lengths_start_at\": 1}.")
_MAX_BUCKETS = typer.Option(4, help="With --lengths: how many buckets at most.")
_PAD = typer.Option([], "--pad", help="NAME=VALUE: the pad value of an input (default 0).")
_DYNAMIC_BATCH = typer.Option(False, help="Accept any batch size in dim 0 (split / pad).")
_BATCH = typer.Option(None, help="With --dynamic-batch: the batch compiled (rows per engine "
    "call; the example's rows repeated); default: the "
    "example's. `archfit serve` fills it with requests. With "
    "--generate: the rows of the decode step (a server's "
    "continuous batch), besides one.")
_BATCH_SIZES = typer.Option(None, "--batch-sizes", help="With --dynamic-batch (or --pack-rows, or --generate for a "
    "decoder-only model): smaller row counts compiled too (e.g. 1,2 beside --batch 4): a partial batch, a server's "
    "included, runs on the smallest that holds it.")
_PACK = typer.Option(None, "--pack", help="Encoders: pack several sequences into rows of "
    "this many tokens (row lengths: --buckets, or chosen from --lengths).")
_PACK_ROWS = typer.Option(1, help="With --pack: rows per engine call.")
_PACK_OUTPUT = typer.Option([], "--pack-output", help="With --pack: a model output to keep "
    "(repeat; default: every output with one value per token).")
_POOL = typer.Option(None, help="With --pack: add a per-sequence 'pooled' output: mean or "
    "first.")
_GENERATE = typer.Option(False, "--generate", help="Seq2seq and decoder-only language models: compile for "
    "generation (encoder or prefill per source/prompt bucket, a decode step "
    "over a static key/value cache).")
_SOURCE_BUCKETS = typer.Option("16,32,64", help="With --generate: source- or prompt-length buckets.")
_MAX_NEW_TOKENS = typer.Option(64, help="With --generate: new tokens the key/value cache holds.")
_NUM_BEAMS = typer.Option(1, help="With --generate: most beams generate will be asked for.")
_HTML = typer.Option(None, "--html", help=HTML_HELP)
_COMPARE = typer.Option(True, help="Time the compiled model against eager PyTorch after compiling "
    "(about 2 s; 4 s with --generate).")
_ACCURACY = typer.Option(None, help=ACCURACY_HELP)
_PER_PARTITION = typer.Option(False, "--per-partition",
    help="Also compile each partition on every other real target and keep, "
         "per partition, the one the whole model measures fastest with.")
_AS_JSON = typer.Option(False, "--json", help="Machine-readable output.")
_TASK = typer.Option(None, "--task", help=TASK_HELP)
_LENGTH = typer.Option(None, "--length", help=LENGTH_HELP)
_CALIBRATION = typer.Option(None, "--calibration", help="int8: input sets to calibrate on: an .npz of arrays named "
                            "by input, each stacked over the sets ([sets, ...]), or a folder of .npz files, one set each.")
_VALIDATION = typer.Option(None, "--validation", help="Input sets to validate on (as --calibration); with --accuracy, "
                           "the gate over the whole set decides.")


@app.command("compile")
def compile_(model: str = _MODEL,
             output: Optional[Path] = _OUTPUT,
             target: str = _TARGET,
             precision: Optional[str] = _PRECISION,
             force_cpu: List[str] = _FORCE_CPU,
             require_full: bool = _REQUIRE_FULL,
             payoff: bool = _PAYOFF,
             min_partition_size: Optional[int] = _MIN_PARTITION_SIZE,
             no_cache: bool = _NO_CACHE,
             tiny: bool = _TINY,
             shape: List[str] = _SHAPE,
             vary: List[str] = _VARY,
             buckets: Optional[str] = _BUCKETS,
             lengths: Optional[Path] = _LENGTHS,
             max_buckets: int = _MAX_BUCKETS,
             pad: List[str] = _PAD,
             dynamic_batch: bool = _DYNAMIC_BATCH,
             batch: Optional[int] = _BATCH,
             batch_sizes: Optional[str] = _BATCH_SIZES,
             pack: Optional[int] = _PACK,
             pack_rows: int = _PACK_ROWS,
             pack_output: List[str] = _PACK_OUTPUT,
             pool: Optional[str] = _POOL,
             generate: bool = _GENERATE,
             source_buckets: str = _SOURCE_BUCKETS,
             max_new_tokens: int = _MAX_NEW_TOKENS,
             num_beams: int = _NUM_BEAMS,
             html: Optional[Path] = _HTML,
             compare: bool = _COMPARE,
             accuracy: Optional[str] = _ACCURACY,
             per_partition: bool = _PER_PARTITION,
             calibration: Optional[Path] = _CALIBRATION,
             validation: Optional[Path] = _VALIDATION,
             task: Optional[str] = _TASK,
             length: Optional[int] = _LENGTH,
             weights: Optional[str] = typer.Option(None, "--weights", help=WEIGHTS_HELP),
             as_json: bool = _AS_JSON):
    """Compile for a target, validate against eager PyTorch, compare latency, optionally save."""
    from .. import save, trace
    from ..artifact.container import check_output_path
    from ..text import Directory
    from .models import load_model, torch_module

    for path in filter(None, (output, html)):  # before any work: a bad path found after a long compile loses it
        check_output_path(path)
    row_counts = _row_counts(batch_sizes)
    if generate:
        return _compile_seq2seq(model, tiny, output, target, precision, source_buckets, max_new_tokens, num_beams,
                                not no_cache, as_json, html, compare, accuracy, batch or 1, row_counts)
    mod, inputs, name = load_model(model, tiny, shape, task, length, weights)
    if batch is not None:
        inputs = with_batch(inputs, batch, dynamic_batch)
    if buckets and not vary and isinstance(mod, Directory):  # a directory's token inputs vary in length
        vary = [f"{n}:1" for n in mod.text.inputs]
    if pack is not None:
        spec, packing = None, packing_of(pack, pack_rows, pack_output, pool, vary, buckets, lengths, max_buckets,
                                         row_counts)
        row_counts = ()  # the packed rows' counts, not a dynamic batch's
    else:
        spec, packing = buckets_of(vary, buckets, lengths, max_buckets, pad), None
    sets = {k: read_sets(path, torch_module(mod), inputs, f"--{k}") for k, path in (("calibration", calibration),
                                                                        ("validation", validation)) if path}
    with progress_line(not as_json) as progress:
        compiled = trace(mod, inputs, target=target, precision=precision, force_cpu=force_cpu,
                         require_full=require_full, min_partition_size=min_partition_size, check_payoff=payoff,
                         cache=not no_cache, progress=progress, name=name, buckets=spec,
                         dynamic_batch=dynamic_batch, packing=packing, accuracy=accuracy or declared_gate(model),
                         batch_sizes=row_counts,
                         per_partition=per_partition, calibration=sets.get("calibration"),
                         validation_inputs=sets.get("validation"))
    if output is not None:
        save(compiled, output)
    latency, line = _compare(torch_module(mod), compiled, inputs) if compare else (None, "latency: not compared (--no-compare)")
    _tell(compiled, output, html, as_json, line, {"latency_ms": latency})


def _tell(compiled, output: Path | None, html: Path | None, as_json: bool, line: str, measured: dict) -> None:
    """What compile prints (or emits as JSON) and writes as a page once a model is compiled."""
    from ..report import to_html

    if html is not None:
        write_page(html, to_html(compiled, latency=line), not as_json)
    if as_json:
        emit(compiled.report.to_dict() | measured | {"output": str(output) if output else None})
        return
    typer.echo(compiled.report.to_text())
    if compiled.summary():
        typer.echo(compiled.summary())
    typer.echo(line)
    if output is not None:
        typer.echo(f"saved {output} ({output.stat().st_size / 2**20:.1f} MiB)")


def _compare(mod, compiled, inputs) -> tuple[dict | None, str]:
    """Median latency of eager PyTorch and of the compiled model on the example inputs."""
    import torch

    from ..core.capture import normalize_inputs
    from ..core.timing import median_seconds
    from ..errors import InputError

    if not isinstance(mod, torch.nn.Module):
        return None, "latency: not compared for ONNX/TensorFlow models here (benchmarks/frameworks.py does)"
    args, kwargs = normalize_inputs(inputs)
    try:
        with torch.no_grad():
            eager_ms = median_seconds(lambda: mod(*args, **kwargs), budget=1.0) * 1e3
            compiled_ms = median_seconds(lambda: compiled(*args, **kwargs), budget=1.0) * 1e3
    except InputError as e:  # buckets chosen below the example's size
        return None, f"latency: not compared, the example inputs do not fit: {e}"
    return ({"eager": eager_ms, "compiled": compiled_ms},
            f"latency (median, batch as given): eager PyTorch {eager_ms:.3f} ms, archfit {compiled.target} "
            f"{compiled_ms:.3f} ms, speedup {eager_ms / compiled_ms:.2f}x")


def declared_gate(model: str) -> str | None:
    """The task gate a built-in model declares (detectors: detection); None for other models."""
    from .. import zoo

    return zoo.get(model).accuracy if model in zoo.names() else None


def _compile_seq2seq(model: str, tiny: bool, output, target: str, precision, source_buckets: str, max_new_tokens: int,
                     num_beams: int, cache: bool, as_json: bool, html: Path | None = None, compare: bool = True,
                     accuracy: str | None = None, batch: int = 1, step_rows: tuple[int, ...] = ()) -> None:
    """compile --generate: a seq2seq model (encoder buckets + decoder step) or a decoder-only one
    (prefill buckets + decode step), by what the model is; `batch`: rows of the decode step
    (the cache rows `archfit serve` runs a continuous batch in), besides one."""
    import torch

    from .. import save, trace_generate, trace_seq2seq
    from ..errors import InputError
    from .models import load_model
    from ..core.timing import median_seconds

    from ..text.directory import CAUSAL, GENERATE, directory_task, is_directory, load_generator

    if is_directory(model):  # a generation directory: ids drawn over its vocabulary
        task = CAUSAL if directory_task(model) == CAUSAL else GENERATE
        hf = load_generator(model, task)
        g = torch.Generator().manual_seed(0)
        inputs = {"input_ids": torch.randint(4, hf.config.vocab_size - 1, (1, 64), generator=g)}
    else:
        mod, inputs, _name = load_model(model, tiny)
        hf = getattr(mod, "model", mod)  # the zoo wraps generators as one forward pass
    causal = not getattr(getattr(hf, "config", None), "is_encoder_decoder", False)
    try:
        buckets = tuple(int(x) for x in source_buckets.split(","))
    except ValueError:
        raise InputError(f"--source-buckets {source_buckets!r} must be sizes like 16,32,64") from None
    with progress_line(not as_json) as progress:
        if causal:
            compiled = trace_generate(hf, target, prompt_buckets=buckets, num_beams=num_beams, slots=batch,
                                      step_rows=step_rows, max_new_tokens=max_new_tokens, precision=precision,
                                      cache=cache, progress=progress, accuracy=accuracy)
        else:
            compiled = trace_seq2seq(hf, target, source_buckets=buckets, num_beams=num_beams, batch_size=batch,
                                     max_new_tokens=max_new_tokens, precision=precision, cache=cache,
                                     progress=progress, accuracy=accuracy)
    if is_directory(model):  # its tokenizer, when it has one: archfit generate FILE --text
        from ..text.directory import generation_text

        compiled.text = generation_text(model, buckets[-1] if causal else compiled.source_len, task)
    if output is not None:
        save(compiled, output)
    ids = inputs["input_ids"] if isinstance(inputs, dict) else inputs[0]
    ids = ids[:, :max(buckets)]  # the comparison runs within the largest bucket
    n = min(max_new_tokens, 32)
    kw = dict(max_new_tokens=n, min_new_tokens=n)  # same work for both: every call makes n tokens
    eager_ms = compiled_ms = None
    with torch.no_grad():
        same = bool(torch.equal(compiled.generate(ids, **kw), hf.generate(ids, **kw)))
        if compare:
            eager_ms = median_seconds(lambda: hf.generate(ids, **kw), budget=2.0) * 1e3
            compiled_ms = median_seconds(lambda: compiled.generate(ids, **kw), budget=2.0) * 1e3
    timed = (f"eager transformers {eager_ms:.1f} ms, archfit {compiled.target} {compiled_ms:.1f} ms "
             f"({eager_ms / compiled_ms:.2f}x, {n / compiled_ms * 1e3:.0f} tokens/s)" if compare else "not timed (--no-compare)")
    summary = (f"greedy generation of {n} tokens from {ids.shape[1]} {'prompt' if causal else 'source'} tokens: "
               f"{timed}, same tokens: {'yes' if same else 'NO'}")
    _tell(compiled, output, html, as_json, summary,
          {"greedy_ms": {"eager": eager_ms, "compiled": compiled_ms} if compare else None, "same_tokens": same})


@app.command("bench")
def bench_(model: str = typer.Argument(..., help=MODEL_HELP + " Or a file written by `archfit compile -o`."),
           target: List[str] = typer.Option(["openvino", "onnxruntime"], "--target", "-t", help="archfit target(s)."),
           precision: List[str] = typer.Option(["fp32", "bf16"], "--precision", help="Precision(s) to run archfit at."),
           arm: List[str] = typer.Option([], "--arm", help="Only the arms whose name contains this (repeatable)."),
           peers: bool = typer.Option(True, help="Also run the peers (torch.compile, ONNX Runtime and OpenVINO "
                                                 "used directly, ...)."),
           rounds: int = typer.Option(5, help="Rounds; every arm runs once per round, interleaved."),
           seconds: float = typer.Option(1.0, help="Seconds each arm runs per round (the matmul peak is measured "
                                                   "for twice that)."),
           tiny: bool = typer.Option(False, help="Use the tiny variant of a built-in model."),
           task: Optional[str] = typer.Option(None, "--task", help=TASK_HELP),
           length: Optional[int] = typer.Option(None, "--length", help=LENGTH_HELP),
           weights: Optional[str] = typer.Option(None, "--weights", help=WEIGHTS_HELP),
           as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """archfit against eager PyTorch and the other ways to run the model, side by side."""
    import torch

    from .. import load
    from . import bench
    from .models import load_model, torch_module

    if model.endswith(".archfit"):
        module = load(model)
        flat = [torch.zeros(s.shape, dtype=s.dtype) for s in module.inputs]
        args, kwargs = torch.utils._pytree.tree_unflatten(flat, module.in_spec)
        builders = {f"archfit {module.target} {module.precision} (loaded)":
                    (module.precision, lambda: (lambda: module(*args, **kwargs)))}
        flops, peaks = 0, {"fp32": float("nan"), "bf16": float("nan")}  # no model here to count or compare
    else:
        mod, inputs, _name = load_model(model, tiny, task=task, length=length, weights=weights)
        mod = torch_module(mod).eval()
        builders = bench.arms(mod, inputs, targets=target, precisions=precision, peers=peers,
                              accuracy=declared_gate(model))
        flops = bench.model_flops(mod, inputs)
        peaks = {p: bench.matmul_peak_gflops(dtype, seconds=2 * seconds) if p == "fp32" or bench.bf16_units()
                 else float("nan")  # no bf16 units: PyTorch's bf16 matmul is a slow emulation, not a peak
                 for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    if arm:
        builders = {k: v for k, v in builders.items() if k == "eager PyTorch" or any(a in k for a in arm)}
    with progress_line(not as_json) as progress:
        results = bench.run_arms(builders, rounds=rounds, seconds_per_round=seconds, log=progress)
    rows = bench.table(results, flops, peaks)
    if as_json:
        emit({"model": model, "gflop": flops / 1e9, "matmul_peak_gflops": peaks, "rows": rows})
        return
    bf16 = f"bf16 {peaks['bf16']:.0f}" if peaks["bf16"] == peaks["bf16"] else "bf16 - (no bf16 units)"
    typer.echo(f"{model}: {flops / 1e9:.3f} GFLOP per call; matmul peak here: fp32 {peaks['fp32']:.0f}, "
               f"{bf16} GFLOP/s; {torch.get_num_threads()} threads")
    typer.echo(bench.render(rows))


def _row_counts(text: str | None) -> tuple[int, ...]:
    """--batch-sizes 1,2 -> (1, 2)."""
    from ..errors import InputError

    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise InputError(f"--batch-sizes {text!r}: give row counts separated by commas, e.g. 1,2") from None
