import os

import pytest
import torch

from archfit import zoo


if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: each keeps to one thread instead of fighting over both, its
    # engines too (and unpinned: OpenVINO pins both workers' threads to the same cores), and so
    # do the servers and Ray actors it starts (they inherit the variable). 4:28 -> 4:06 cold on
    # a 2-core AMD EPYC.
    torch.set_num_threads(1)
    os.environ.setdefault("ARCHFIT_THREADS", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests never read or write the user's compile cache; subprocesses inherit this too."""
    import os

    os.environ["ARCHFIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("archfit-cache"))
    os.environ.pop("ARCHFIT_CACHE", None)


@pytest.fixture(scope="session")
def tiny_bert():
    return zoo.build("bert-base", tiny=True)


@pytest.fixture(scope="session")
def tiny_resnet18():
    return zoo.build("resnet18", tiny=True)


@pytest.fixture(scope="session")
def mlp():
    """Linear-GELU-Linear, 32 outputs: a small classifier whose GELU can be forced to the CPU."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 32)).eval()
    return model, (torch.randn(4, 64),)


@pytest.fixture(scope="session")
def mlp_custom():
    return zoo.build("mlp-custom-op", tiny=True)


@pytest.fixture(scope="session")
def saved_mlp(mlp_custom, tmp_path_factory):
    """The custom-op MLP saved once: two engines with a CPU op between them (a computing host program)."""
    import archfit

    model, inputs = mlp_custom
    compiled = archfit.trace(model, inputs, target="openvino", check_payoff=False, validate=False)
    return archfit.save(compiled, tmp_path_factory.mktemp("saved") / "mlp.archfit")


def cli(*args):
    """The `archfit` command in this process, no interpreter start-up per call (a fresh process is
    tested where it matters): an object with returncode, stdout and stderr, like subprocess.run's."""
    import contextlib
    import io
    import types

    from archfit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code or 0
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def flat_outputs(out):
    return torch.utils._pytree.tree_flatten(out)[0]


def assert_close_to_eager(model, compiled, inputs, precision="fp32"):
    """Compiled outputs equal eager PyTorch within archfit's documented tolerance."""
    from archfit import TOLERANCES
    from archfit.core.capture import normalize_inputs

    atol, rtol = TOLERANCES[precision]
    args, kwargs = normalize_inputs(inputs)
    with torch.no_grad():
        want, got = model(*args, **kwargs), compiled(*args, **kwargs)
    if _is_detections(want):
        return assert_same_detections(got, want, atol, rtol)
    want, got = flat_outputs(want), flat_outputs(got)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        bound = atol + rtol * w.abs().max().item()
        assert (g - w).abs().max().item() <= bound


def _is_detections(out) -> bool:
    return isinstance(out, list) and bool(out) and isinstance(out[0], dict) and {"boxes", "scores", "labels"} <= set(out[0])


def assert_same_detections(got, want, atol, rtol):
    """Per image: the same number of boxes, and every eager detection matched by a compiled one
    with the same label and box and score within tolerance. Matched, not compared in order:
    NMS returns boxes by score, and scores equal to within rounding may come out swapped. For the
    same reason, at a max-detections cut the last kept boxes may be others of equal score."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["boxes"].shape == w["boxes"].shape, (g["boxes"].shape, w["boxes"].shape)
        box_tol = atol + rtol * float(w["boxes"].abs().max()) if len(w["boxes"]) else 0.0
        score_tol = atol + rtol * float(w["scores"].abs().max()) if len(w["scores"]) else 0.0
        free = list(range(len(g["boxes"])))
        cut = float(w["scores"].min()) + score_tol if len(w["scores"]) else 0.0
        for i in range(len(w["boxes"])):
            match = next((j for j in free if int(g["labels"][j]) == int(w["labels"][i])
                          and abs(float(g["scores"][j] - w["scores"][i])) <= score_tol
                          and float((g["boxes"][j] - w["boxes"][i]).abs().max()) <= box_tol), None)
            at_cut = float(w["scores"][i]) <= cut
            assert match is not None or at_cut, f"eager detection {i} ({w['labels'][i]}, {w['scores'][i]:.6f}) has no match"
            if match is not None:
                free.remove(match)
        assert all(float(g["scores"][j]) <= cut for j in free), "compiled detections above the cut match no eager one"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openvino_layers(compiled) -> list[tuple[str, str]]:
    """(layer type, kernel) of every layer OpenVINO's CPU plugin runs for a compiled module's engines."""
    from archfit.core.engines import EngineModule

    return [layer for m in compiled.modules() if isinstance(m, EngineModule) for layer in m.engine.layers()]


def openvino_layer_types(compiled) -> set[str]:
    """The layer types OpenVINO's CPU plugin runs for a compiled module's engines (after its own fusions)."""
    return {kind for kind, _ in openvino_layers(compiled)}


def settle(seconds: float = 0.0, until=None, timeout: float = 30.0) -> None:
    """Wait while tritonclient's async requests go on: they are gevent greenlets on this thread, and
    time.sleep or a threading wait would block them (a request sent "before" might never leave).
    With `until`, waits (at most `timeout`) for that to hold."""
    import time

    import gevent

    deadline = time.monotonic() + timeout
    gevent.sleep(seconds)
    while until is not None and not until():
        assert time.monotonic() < deadline, f"waited {timeout} s for {until}"
        gevent.sleep(0.02)


class Running:
    """A Server on a uvicorn thread in this process (loading once per module, no interpreter start)."""

    def __init__(self, server, header_timeout: float = 5.0):
        import threading
        import time

        import uvicorn

        from archfit.serve import create_app
        from archfit.serve.connections import config

        self.server, self.port = server, free_port()
        self.uv = uvicorn.Server(config(create_app(server), "127.0.0.1", self.port, header_timeout, log_level="error"))
        self.thread = threading.Thread(target=self.uv.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uv.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        self.url = f"127.0.0.1:{self.port}"

    def client(self, concurrency=8):
        import tritonclient.http as http

        return http.InferenceServerClient(self.url, concurrency=concurrency, network_timeout=60)

    def post(self, path, body: bytes, headers=None):
        import urllib.error
        import urllib.request

        req = urllib.request.Request(f"http://{self.url}{path}", data=body, headers=headers or {}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://{self.url}/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self):
        self.uv.should_exit = True
        self.thread.join(30)


def metric_total(text: str, name: str, **labels) -> float:
    """Sum of a Prometheus series over the lines carrying `labels`."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(w in line for w in want))


def budget_servable(budget: int):
    """A packed servable with a budget (tokens one engine call holds) and no module: the
    batcher's grouping rule alone, for tests of the batcher."""
    from archfit.serve.adapters import PackedServable

    def __init__(self):
        self.name = "m"

    return type("Budget", (PackedServable,), {"__init__": __init__, "budget": budget})()
