"""Scale-out on Ray Serve: the same Server (routes, checks, batcher) inside each replica, Ray's
proxy in front. Ray is an extra: `pip install 'archfit[serve]'`.

Ray's traps, set here so users do not meet them: a replica takes at most `max_ongoing_requests`
requests at once (default 5), which would cap every batch at 5, so it is raised to the queue
bound; and each replica's engines get `threads` threads, so replicas on one machine do not
fight over its cores."""
from __future__ import annotations

import asyncio
import os

from ..errors import InputError


class Replica:
    """One Ray Serve replica: loads the files once, starts its batchers on the first request."""

    def __init__(self, specs: list[str], threads: int | None = None, max_delay_ms: float = 5.0,
                 max_queue: int = 256, max_body: int = 64 << 20, timeouts: dict | None = None):
        from .app import Server, engine_threads
        from .repository import load_models

        engine_threads(threads)
        self.server = Server(load_models(specs), max_delay_ms, max_queue, max_body, timeouts=timeouts,
                             repository_api=False)
        self._starting: asyncio.Task | None = None

    async def __call__(self, request):
        if not self.server.ready:
            if self._starting is None:
                self._starting = asyncio.ensure_future(self.server.start())
            await asyncio.shield(self._starting)
        return await self.server.handle(request)


def application(specs: list[str], replicas: int = 2, threads: int | None = 1, max_delay_ms: float = 5.0,
                max_queue: int = 256, max_body: int = 64 << 20, autoscaling_config: dict | None = None,
                ray_actor_options: dict | None = None, timeouts: dict | None = None):
    """A Ray Serve application serving `specs` (paths, or name=path) with `replicas` replicas, or
    as `autoscaling_config` says (passed to Ray as given). Run it with `ray.serve.run(app)`."""
    try:
        from ray import serve
    except ImportError as e:
        raise InputError("serving on Ray needs Ray Serve: pip install 'archfit[serve]'") from e
    from .repository import model_files

    files = model_files(specs)
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:  # before Ray starts replicas that would fail one by one
        raise InputError(f"file {missing[0]} does not exist")
    specs = [f"{n}={p.resolve()}" for n, p in files.items()]  # replicas may start in another directory
    options = {"num_cpus": threads or 1} if ray_actor_options is None else ray_actor_options
    scale = {"autoscaling_config": autoscaling_config} if autoscaling_config else {"num_replicas": replicas}
    deployment = serve.deployment(Replica, name="archfit", max_ongoing_requests=max_queue,
                                  ray_actor_options=options, **scale)
    return deployment.bind(specs, threads, max_delay_ms, max_queue, max_body, timeouts)


def run(specs: list[str], host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
        **kwargs) -> None:
    """Start (or join, with `address`) a Ray cluster and serve until interrupted."""
    import ray
    from ray import serve

    app = application(specs, **kwargs)
    if address is None:  # a cluster started here reports Ray's usage stats unless told not to (README, Targets)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name="archfit", route_prefix="/", blocking=True)
