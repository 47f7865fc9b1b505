"""archfit serve: an unchanged Open Inference Protocol client (tritonclient) against the server,
answers equal to archfit.load on the same inputs, batching across requests by bucket, one-line
400s that leave the server serving, 503 past the queue bound, dropped requests of clients that
left, SIGTERM draining, metrics."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

import archfit
from conftest import Running, budget_servable, cli, free_port, metric_total, settle


@pytest.fixture(scope="module")
def bert_file(tmp_path_factory):
    """Tiny BERT over buckets 8 and 16 with a dynamic batch of 4 (the bucket-aware batcher's case),
    compiled through the CLI as a user would."""
    path = tmp_path_factory.mktemp("serve") / "bert.archfit"
    r = cli("compile", "bert-base", "--tiny", "-t", "openvino", "--vary", "input_ids:1", "--vary", "attention_mask:1",
            "--buckets", "8,16", "--dynamic-batch", "--batch", "4", "--no-compare", "-o", str(path))
    assert r.returncode == 0, r.stderr
    return path


@pytest.fixture(scope="module")
def running(bert_file):
    from archfit.serve import Server, load_models

    r = Running(Server(load_models([f"bert={bert_file}"]), max_delay_ms=50, max_body=1 << 20))
    yield r
    r.stop()


def bert_inputs(length, batch=1, seed=0, binary=True):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 500, (batch, length)).astype(np.int64)
    mask = np.ones((batch, length), np.int64)
    a = http.InferInput("input_ids", list(ids.shape), "INT64")
    a.set_data_from_numpy(ids, binary_data=binary)
    b = http.InferInput("attention_mask", list(mask.shape), "INT64")
    b.set_data_from_numpy(mask, binary_data=not binary)  # one input each way: both decodings are exercised
    return {"input_ids": ids, "attention_mask": mask}, [a, b]


def test_metadata_describes_the_file(running):
    c = running.client()
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("bert")
    meta = c.get_model_metadata("bert")
    assert meta["inputs"] == [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
                              {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]}]
    assert [o["name"] for o in meta["outputs"]] == ["last_hidden_state", "pooler_output"]
    assert meta["outputs"][0]["shape"] == [-1, -1, 64] and meta["parameters"]["max_batch"] == 4
    with pytest.raises(InferenceServerException, match="no model 'nope'; served here: bert"):
        c.get_model_metadata("nope")


def test_concurrent_mixed_lengths_batch_by_bucket_and_equal_load(running, bert_file):
    loaded = archfit.load(bert_file)
    c = running.client()
    before = running.metrics()
    lengths = [3, 7, 12, 16, 5, 8, 9, 2]
    sent = [(bert_inputs(n, seed=n, binary=i % 2 == 0)) for i, n in enumerate(lengths)]
    futures = [c.async_infer("bert", inputs, outputs=[http.InferRequestedOutput("last_hidden_state", binary_data=i % 2 == 0),
                                                      http.InferRequestedOutput("pooler_output")])
               for i, (_, inputs) in enumerate(sent)]
    for (given, _), fut, n in zip(sent, futures, lengths):
        res = fut.get_result()
        want = loaded(**{k: torch.from_numpy(v) for k, v in given.items()})
        hidden = res.as_numpy("last_hidden_state")
        assert hidden.shape == (1, n, 64)
        np.testing.assert_allclose(hidden, want.last_hidden_state.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(res.as_numpy("pooler_output"), want.pooler_output.numpy(), atol=1e-5, rtol=0)
    after = running.metrics()

    # eight requests arriving together, in two buckets: fewer engine calls than requests, each
    # bucket's requests padded to that bucket only
    batches = metric_total(after, "archfit_batch_seconds_count") - metric_total(before, "archfit_batch_seconds_count")
    assert 2 <= batches < len(lengths)
    answered = metric_total(after, "archfit_requests_total", code="200") - metric_total(before, "archfit_requests_total", code="200")
    assert answered == len(lengths)
    real = metric_total(after, "archfit_positions_total", kind="real") - metric_total(before, "archfit_positions_total", kind="real")
    assert real == sum(lengths)
    assert 'archfit_queue_rows{model="bert"} 0.0' in after


def test_a_batch_of_rows_in_one_request(running, bert_file):
    loaded = archfit.load(bert_file)
    given, inputs = bert_inputs(11, batch=6, seed=3)  # more rows than the compiled batch: run in chunks
    res = running.client().infer("bert", inputs)
    want = loaded(**{k: torch.from_numpy(v) for k, v in given.items()})
    np.testing.assert_allclose(res.as_numpy("last_hidden_state"), want.last_hidden_state.numpy(), atol=1e-5, rtol=0)


def _infer_error(running, inputs, outputs=None) -> str:
    with pytest.raises(InferenceServerException) as e:
        running.client().infer("bert", inputs, outputs=outputs)
    return str(e.value)


def test_bad_requests_get_one_line_400_and_the_server_goes_on(running):
    ids = np.ones((1, 8), np.int64)

    def tensor(name, array, dtype="INT64"):
        t = http.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    mask = tensor("attention_mask", ids)
    cases = [
        ([tensor("input_ids", ids)], "model 'bert' takes inputs input_ids, attention_mask: missing 'attention_mask'"),
        ([tensor("input_ids", ids), mask, tensor("extra", ids)], "unknown 'extra'"),
        ([tensor("input_ids", ids.astype(np.int32), "INT32"), mask], r"input 'input_ids': expected INT64 \[-1, -1\]"),
        ([tensor("input_ids", ids[0]), mask], r"expected INT64 \[-1, -1\] \(-1: any size\), got INT64 \[8\]"),
        ([tensor("input_ids", np.ones((1, 17), np.int64)), tensor("attention_mask", np.ones((1, 17), np.int64))],
         "dim 1 has size 17, larger than the largest bucket 16"),
        ([tensor("input_ids", np.ones((1, 9), np.int64)), mask], "dim 1 is 8, but another input's is 9"),
        ([tensor("input_ids", np.full((1, 8), 10**6, np.int64)), mask], "holds id 1000000, outside the embedding"),
    ]
    for inputs, message in cases:
        text = _infer_error(running, inputs)
        assert len(text.splitlines()) == 1 and re.search(message, text), (message, text)
    # malformed bodies, sent raw
    status, body, _ = running.post("/v2/models/bert/infer", b"{not json")
    assert status == 400 and "the body is not valid JSON" in json.loads(body)["error"]
    status, body, _ = running.post("/v2/models/bert/infer", json.dumps({"inputs": [
        {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1]}]}).encode())
    assert status == 400 and "'data' holds 1 values, shape [1, 2] takes 2" in json.loads(body)["error"]
    status, body, _ = running.post("/v2/models/bert/infer", b'{"inputs": [{"name": "a", "shape": [1], '
                                   b'"datatype": "FP32", "parameters": {"binary_data_size": 4}}]}\x00\x00\x00\x00',
                                   {"Inference-Header-Content-Length": "999"})
    assert status == 400 and "does not fit a body of" in json.loads(body)["error"]
    status, body, _ = running.post("/v2/models/bert/infer", b"x" * ((1 << 20) + 1))
    assert status == 413 and "over the server's limit of 1048576" in json.loads(body)["error"]
    text = _infer_error(running, bert_inputs(4)[1], [http.InferRequestedOutput("logits")])
    assert "model 'bert' has no output 'logits'; it has last_hidden_state, pooler_output" in text
    # and the next good request is answered
    res = running.client().infer("bert", bert_inputs(6)[1])
    assert res.as_numpy("last_hidden_state").shape == (1, 6, 64)
    assert 'code="400"' in running.metrics()


class Gate:
    """Wraps a servable's run so a test decides when the engine may go on (and sees what it ran)."""

    def __init__(self, servable):
        self.servable, self.run = servable, servable.run
        self.open = threading.Event()
        self.started = threading.Event()
        self.seen: list[int] = []
        servable.run = self

    def __call__(self, items):
        self.seen.append(len(items))
        self.started.set()
        assert self.open.wait(30)
        return self.run(items)


def _gated(bert_file, max_queue: int) -> tuple[Gate, Running]:
    """A server of the tiny BERT whose engine calls wait at a Gate the test opens."""
    from archfit.serve import Server, load_models

    models = load_models([f"bert={bert_file}"])
    gate = Gate(models["bert"])
    return gate, Running(Server(models, max_delay_ms=1, max_queue=max_queue))


def test_queue_bound_503_and_a_gone_client_is_dropped(bert_file):
    gate, r = _gated(bert_file, max_queue=2)
    try:
        c = r.client()
        first = c.async_infer("bert", bert_inputs(8)[1])  # taken by the engine, which waits at the gate
        settle(until=gate.started.is_set)
        queued = [c.async_infer("bert", bert_inputs(8, seed=i)[1]) for i in range(2)]  # fills the queue
        settle(0.3)
        text = _infer_error(r, bert_inputs(8)[1])
        assert "overloaded: model 'bert' has 2 rows queued (limit 2); retry shortly" in text
        status, _, headers = r.post("/v2/models/bert/infer", json.dumps({"inputs": [
            {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [5, 6]},
            {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 1]}]}).encode())
        assert status == 503 and headers.get("retry-after", headers.get("Retry-After")) == "1"
        # a client that sends a request and leaves: dropped from the queue, never run
        body = json.dumps({"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [5, 6]},
                                      {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64",
                                       "data": [1, 1]}]}).encode()
        gate.open.set()
        first.get_result()
        for f in queued:
            f.get_result()
        gate.open.clear()
        gate.started.clear()
        blocker = c.async_infer("bert", bert_inputs(8)[1])
        settle(until=gate.started.is_set)
        with socket.create_connection(("127.0.0.1", r.port)) as s:
            s.sendall(b"POST /v2/models/bert/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            time.sleep(0.3)
        time.sleep(0.3)
        seen = len(gate.seen)
        gate.open.set()
        blocker.get_result()
        time.sleep(0.3)
        assert len(gate.seen) == seen  # nothing more ran: the gone client's request was dropped
        assert 'archfit_requests_total{bucket="-",code="499",model="bert"} 1.0' in r.metrics()
    finally:
        gate.open.set()
        r.stop()


def test_cli_serves_and_sigterm_drains_in_flight_requests(bert_file):
    port = free_port()
    env = dict(os.environ, ARCHFIT_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "archfit", "serve", str(bert_file), "--port", str(port),
                             "--max-delay-ms", "1500"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True)
    try:
        c = http.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)
        deadline = time.monotonic() + 90
        while True:
            try:
                if c.is_server_ready():
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.2)
        given, inputs = bert_inputs(5)
        pending = c.async_infer("bert", inputs)  # waits up to 1.5 s in the batcher for company
        settle(0.4)
        proc.send_signal(signal.SIGTERM)
        res = pending.get_result()  # answered, not dropped
        assert res.as_numpy("last_hidden_state").shape == (1, 5, 64)
        assert proc.wait(60) == 0
        assert "serving bert (bucketed) on http://127.0.0.1:" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_thread_limit_unpins_openvino_engines(bert_file, monkeypatch):
    """ARCHFIT_THREADS (set per Ray replica): engines take that many threads and are not pinned to
    cores (OpenVINO pins by default, and two processes on Linux pin to the same core)."""
    from archfit.core.engines import EngineModule

    monkeypatch.setenv("ARCHFIT_THREADS", "1")
    engines = [m.engine for m in archfit.load(bert_file).modules() if isinstance(m, EngineModule)]
    assert engines
    for e in engines:
        assert e.compiled_model.get_property("INFERENCE_NUM_THREADS") == 1
        assert e.compiled_model.get_property("ENABLE_CPU_PINNING") is False


def test_thread_limit_holds_for_engines_compiled_here_too(mlp, monkeypatch):
    from archfit.core.engines import EngineModule

    monkeypatch.setenv("ARCHFIT_THREADS", "1")
    model, inputs = mlp
    compiled = archfit.trace(model, inputs, "openvino", check_payoff=False, cache=False)
    engines = [m.engine for m in compiled.modules() if isinstance(m, EngineModule)]
    assert engines and all(e.compiled_model.get_property("INFERENCE_NUM_THREADS") == 1 and
                           e.compiled_model.get_property("ENABLE_CPU_PINNING") is False for e in engines)
    assert "INFERENCE_NUM_THREADS" not in engines[0].config  # this process's share is not stored in the file


def test_two_streams_run_two_batches_at_once_with_the_same_answers(bert_file, monkeypatch):
    """--streams 2: engines load with two OpenVINO streams and the batcher keeps two batches in
    flight; answers equal archfit.load's."""
    from archfit.core.engines import EngineModule
    from archfit.serve import Server, load_models

    monkeypatch.setenv("ARCHFIT_STREAMS", "2")
    monkeypatch.delenv("ARCHFIT_THREADS", raising=False)  # a stream takes a thread of its own
    models = load_models([f"bert={bert_file}"])
    engines = [m.engine for m in models["bert"].module.modules() if isinstance(m, EngineModule)]
    assert all(e.compiled_model.get_property("NUM_STREAMS") == 2 for e in engines)
    gate = Gate(models["bert"])
    r = Running(Server(models, max_delay_ms=1, streams=2))
    try:
        c = r.client()
        futures = [c.async_infer("bert", bert_inputs(n, seed=n)[1]) for n in (4, 12)]  # two buckets: two batches
        settle(until=lambda: len(gate.seen) >= 2)  # both reach the engine while neither has finished
        gate.open.set()
        loaded = archfit.load(bert_file)
        for n, fut in zip((4, 12), futures):
            given = {k: torch.from_numpy(v) for k, v in bert_inputs(n, seed=n)[0].items()}
            np.testing.assert_allclose(fut.get_result().as_numpy("last_hidden_state"),
                                       loaded(**given).last_hidden_state.numpy(), atol=1e-5, rtol=0)
    finally:
        gate.open.set()
        r.stop()


def test_a_packed_group_is_what_one_engine_call_holds():
    """Packed files: the batcher groups queued requests by their tokens against one engine call's
    rows (first fit, oldest first), so each request is answered when its call ends, not when the
    calls of every queued sequence have."""
    import asyncio

    from archfit.serve.batcher import Batcher, Pending
    from archfit.serve.metrics import Metrics
    from archfit.serve.servable import Item

    loop = asyncio.new_event_loop()
    try:
        b = Batcher(budget_servable(64), Metrics(), max_delay=0.0)  # 2 rows of 32 tokens
        for n in (30, 20, 40, 10, 60):
            b.pending.append(Pending(Item(None, 1, None, n), loop.create_future()))
        first = b._take(time.perf_counter())
        assert [p.item.size for p in first] == [30, 20, 10]  # 40 would overflow the call; 10 still fits
        assert [p.item.size for p in b._take(time.perf_counter())] == [40]
        assert [p.item.size for p in b._take(time.perf_counter())] == [60]
    finally:
        loop.close()


def test_a_batching_bug_fails_the_queued_requests_instead_of_hanging_them():
    import asyncio

    from archfit.serve.batcher import Batcher
    from archfit.serve.metrics import Metrics
    from archfit.serve.servable import Item, Servable

    class Broken(Servable):
        def __init__(self):
            self.name = "broken"

        def cost(self, item):
            raise RuntimeError("cost of a malformed item")

    async def main():
        b = Batcher(Broken(), Metrics(), max_delay=0.0)
        b.start()
        fut = b.submit(Item(None, 1, None))
        with pytest.raises(RuntimeError, match="cost of a malformed item"):
            await asyncio.wait_for(fut, 5)
        await b.close()  # the loop is still alive: it drains and stops

    asyncio.run(main())


def test_hostile_bodies_get_one_line_400_not_a_500(running):
    """Found by a probe with bad clients: each of these escaped as Starlette's bare 500 with a
    traceback, or was taken with its values silently changed (101.9 as the id 101, true as 1)."""
    def post(doc: bytes) -> tuple[int, str]:
        status, body, _ = running.post("/v2/models/bert/infer", doc)
        return status, json.loads(body)["error"]

    def ids(data, datatype="INT64", shape=(1, 2)):
        return json.dumps({"inputs": [{"name": "input_ids", "shape": list(shape), "datatype": datatype, "data": data},
                                      {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64",
                                       "data": [1, 1]}]}).encode()

    cases = [
        (ids([], shape=(0, 2**64)), r"shape \[0, 18446744073709551616\] has more than 16 dims or a dim over"),
        (b"[" * 100_000 + b"]" * 100_000, "the body's JSON is nested too deep"),
        (ids([101.9, 7]), "input 'input_ids': datatype INT64 takes integers, and 'data' holds floats"),
        (ids([True, 7]), "input 'input_ids': datatype INT64 takes integers, and 'data' holds booleans"),
        (json.loads(ids([5, 6])) | {"outputs": [{"name": "last_hidden_state", "parameters": [1]}]},
         "output 'last_hidden_state': 'parameters' must be an object"),
    ]
    before = metric_total(running.metrics(), "archfit_requests_total", code="400")
    for doc, message in cases:
        status, text = post(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
        assert status == 400 and len(text.splitlines()) == 1 and re.search(message, text), (message, text)
    assert metric_total(running.metrics(), "archfit_requests_total", code="400") == before + len(cases)
    res = running.client().infer("bert", bert_inputs(6)[1])  # and the server goes on
    assert res.as_numpy("last_hidden_state").shape == (1, 6, 64)


def test_max_queue_bounds_one_request_and_gone_clients_leave_the_count_at_once(bert_file):
    gate, r = _gated(bert_file, max_queue=8)
    try:
        c = r.client()
        # one request larger than the whole queue: refused before it runs, whatever is queued
        text = _infer_error(r, bert_inputs(8, batch=100)[1])
        assert "the request holds 100 rows, more than the queue takes at once (--max-queue 8); split it" in text
        assert metric_total(r.metrics(), "archfit_requests_total", code="413") == 1
        # a body shorter than its Content-Length, then a hang-up: counted as the client's, not as a 200
        with socket.create_connection(("127.0.0.1", r.port)) as s:
            s.sendall(b"POST /v2/models/bert/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"inputs\"")
        settle(until=lambda: metric_total(r.metrics(), "archfit_requests_total", code="499") == 1)
        assert metric_total(r.metrics(), "archfit_requests_total", code="200") == 0
        # a queued request whose client goes away leaves the queue's count and gauge at once
        blocker = c.async_infer("bert", bert_inputs(8)[1])
        settle(until=gate.started.is_set)
        body = json.dumps({"inputs": [{"name": "input_ids", "shape": [8, 2], "datatype": "INT64", "data": [5] * 16},
                                      {"name": "attention_mask", "shape": [8, 2], "datatype": "INT64",
                                       "data": [1] * 16}]}).encode()
        with socket.create_connection(("127.0.0.1", r.port)) as s:
            s.sendall(b"POST /v2/models/bert/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            settle(until=lambda: metric_total(r.metrics(), "archfit_queue_rows", model="bert") == 8)
        settle(until=lambda: metric_total(r.metrics(), "archfit_queue_rows", model="bert") == 0)
        assert r.server.batchers["bert"].queued_rows == 0  # a full-size request fits again, before the batcher runs
        queued = c.async_infer("bert", bert_inputs(8, batch=8)[1])
        settle(0.2)
        gate.open.set()
        blocker.get_result()
        assert queued.get_result().as_numpy("last_hidden_state").shape == (8, 8, 64)
    finally:
        gate.open.set()
        r.stop()
