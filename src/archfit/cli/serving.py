"""`archfit serve`: compiled files behind the Open Inference Protocol, here or on Ray Serve."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InputError
from .app import app


@app.command()
def serve(files: List[str] = typer.Argument(None, help="Files written by `archfit compile -o`; NAME=PATH names the "
                                                      "model (default: the file's stem)."),
          host: str = typer.Option("127.0.0.1", help="Address to listen on."),
          port: int = typer.Option(8000, help="Port to listen on."),
          grpc_port: Optional[int] = typer.Option(None, help="Also serve the KServe v2 gRPC service on this port "
                                                             "(tritonclient.grpc works unchanged)."),
          max_delay_ms: float = typer.Option(5.0, help="Longest a request waits for others to fill its batch."),
          max_queue: int = typer.Option(256, help="Rows queued per model before requests get 503 + Retry-After."),
          max_body_mb: float = typer.Option(64.0, help="Largest request body (413 beyond)."),
          streams: int = typer.Option(1, help="Batches run at once per model, the engines' threads split among them "
                                             "(OpenVINO streams): more throughput under load, more latency alone."),
          threads: Optional[int] = typer.Option(None, help="Threads per engine (default: all cores; with --ray, 1 "
                                                           "per replica)."),
          header_timeout: float = typer.Option(5.0, help="Seconds a connection has to send its request headers "
                                                        "(then closed with 408)."),
          body_timeout: float = typer.Option(30.0, help="Seconds a request has to send its body after its headers "
                                                      "(then 408)."),
          timeout_ms: List[str] = typer.Option([], help="[NAME=]MS: longest a request waits queued before a 504 "
                                                        "(when it sends no 'timeout' parameter; repeat per model)."),
          slots: Optional[int] = typer.Option(None, help="Decoder-only generation files: cache rows of the "
                                                         "continuous batch (a row count the file's decode step "
                                                         "was compiled for; default its largest)."),
          repository: Optional[Path] = typer.Option(None, help="A directory of NAME.archfit files: all served at "
                                                                "start, and loaded, replaced or unloaded by name "
                                                                "while serving (POST /v2/repository/...)."),
          ray: bool = typer.Option(False, "--ray", help="Serve on Ray Serve (pip install 'archfit[serve]')."),
          replicas: int = typer.Option(2, help="With --ray: replicas of the server."),
          address: Optional[str] = typer.Option(None, help="With --ray: the cluster to join ('auto' after `ray "
                                                           "start`); default: a local Ray instance.")):
    """Serve files over HTTP (KServe v2 / Open Inference Protocol: Triton's and KServe's clients work
    unchanged) with dynamic batching per bucket and Prometheus metrics at /metrics."""
    from ..serve.repository import queue_timeouts

    timeouts = queue_timeouts(timeout_ms)
    files = list(files or [])
    if repository is not None and not repository.is_dir():
        raise InputError(f"--repository {repository}: not a directory; give the directory that holds NAME.archfit files")
    if not files and repository is None:
        raise InputError("archfit serve: give files to serve (NAME=PATH or PATH), or --repository DIR")
    if ray:
        from ..serve import ray as on_ray

        if grpc_port is not None or repository is not None:
            raise InputError(f"{'--grpc-port' if grpc_port is not None else '--repository'}: served without --ray "
                             f"only (Ray Serve's proxy speaks HTTP, and each replica holds its own models); drop one "
                             f"of them")
        on_ray.run(files, host=host, port=port, address=address, replicas=replicas, threads=threads or 1,
                   max_delay_ms=max_delay_ms, max_queue=max_queue, max_body=int(max_body_mb * (1 << 20)),
                   timeouts=timeouts)
        return
    from ..serve import run

    def ready(server):
        names = ", ".join(f"{n} ({s.kind})" for n, s in server.models.items())
        grpc = f", gRPC on {host}:{grpc_port}" if grpc_port is not None else ""
        typer.echo(f"serving {names} on http://{host}:{port}/v2{grpc} (metrics at /metrics)", err=True)

    run(files, host=host, port=port, max_delay_ms=max_delay_ms, max_queue=max_queue, max_body_mb=max_body_mb,
        streams=streams, threads=threads, on_ready=ready, slots=slots, grpc_port=grpc_port,
        timeouts=timeouts, header_timeout=header_timeout, body_timeout=body_timeout,
        repository=None if repository is None else str(repository))
