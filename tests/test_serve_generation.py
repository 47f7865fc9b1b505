"""archfit serve with a decoder-only generation file: continuous batching (more clients than
cache rows; each answer equal to transformers' generate of that prompt alone), KServe v2
generate and generate_stream, infer with token ids (tritonclient), and OpenAI's completions
(the openai client, unchanged), streaming included."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import requests
import torch

import archfit
from conftest import Running
from directories import SENTENCES, WORDS, tokenizer

SLOTS, NEW = 3, 10


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny GPT-2 text-generation directory with its tokenizer, compiled for 3 cache rows and
    served; the eager model beside it is the reference."""
    import transformers

    folder = tmp_path_factory.mktemp("gpt2")
    tok = tokenizer(folder)
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=len(tok),
                                     bos_token_id=2, eos_token_id=3, pad_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # spread weights: a tiny model at HF's init repeats one token
        gen = torch.Generator().manual_seed(1)
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    model.save_pretrained(folder)
    # decode steps at 1 and 3 rows: the server runs 3 cache rows, and 1 when one request runs alone
    module = archfit.trace_generate(folder, "openvino", prompt_buckets=(8, 16), max_new_tokens=NEW, batch_size=1,
                                    slots=SLOTS, check_payoff=False, cache=False)
    path = archfit.save(module, folder / "gpt2.archfit")
    from archfit.serve import Server, load_models

    from conftest import free_port

    grpc_port = free_port()
    running = Running(Server(load_models([f"gpt={path}"]), grpc_address=f"127.0.0.1:{grpc_port}"))
    running.path, running.grpc_url = path, f"127.0.0.1:{grpc_port}"
    yield running, model, module.text
    running.stop()


def _want(model, ids: list[int], **kw) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=kw.pop("max_new_tokens", NEW), **kw)
    return out[0, len(ids):].tolist()


def _post(running, path: str, body: dict) -> requests.Response:
    return requests.post(f"http://{running.url}{path}", json=body, timeout=60)


def test_more_clients_than_rows_each_get_their_own_greedy_tokens(served):
    running, model, _text = served
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(5, len(WORDS), (n,), generator=g).tolist() for n in (3, 7, 12, 5, 16, 9, 4)]
    news = [NEW, 4, 7, NEW, 2, 6, NEW]
    answers = [None] * len(prompts)

    def client(i):
        answers[i] = _post(running, "/v2/models/gpt/generate", {"input_ids": prompts[i],
                                                                "parameters": {"max_tokens": news[i]}})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ids, new, r in zip(prompts, news, answers):
        assert r.status_code == 200, r.text
        assert r.json()["output_ids"] == _want(model, ids, max_new_tokens=new)
    sched = running.server.models["gpt"].scheduler
    assert sched.rows_stepped / sched.steps > 1.5, "requests never shared a decode step"
    from conftest import metric_total

    text = running.metrics()
    assert metric_total(text, "archfit_generated_tokens_total", model="gpt") >= sum(len(r.json()["output_ids"])
                                                                                   for r in answers)
    assert metric_total(text, "archfit_time_to_first_token_seconds_count", model="gpt") >= len(prompts)


def test_a_request_running_alone_moves_to_the_first_row_and_steps_on_one(served):
    """With one request left in the batch, the scheduler moves it to row 0 (if it ran further up)
    and steps it on the 1-row decode step; its tokens stay transformers' own."""
    import asyncio

    from archfit.serve.generation import Scheduler, collect

    running, model, _text = served
    module = archfit.load(running.path)
    assert module.rows == (1, SLOTS)
    g = torch.Generator().manual_seed(11)
    short, long = (torch.randint(5, len(WORDS), (n,), generator=g).tolist() for n in (6, 9))

    async def main():
        sched = Scheduler(module, SLOTS)
        loop = asyncio.get_running_loop()
        with sched.cv:  # both queued before the loop admits either
            first = sched.submit(short, {"max_new_tokens": 2}, loop)  # row 0, done after 2 tokens
            second = sched.submit(long, {"max_new_tokens": NEW}, loop)  # row 1, then alone
        try:
            return await collect(first), await collect(second), sched
        finally:
            await asyncio.to_thread(sched.close)

    a, b, sched = asyncio.run(main())
    assert a == _want(model, short, max_new_tokens=2) and b == _want(model, long)
    assert sched.moved == 1 and sched.steps_by_rows.get(1, 0) >= NEW - 3  # alone: on the 1-row step


def test_stream_sends_each_token_as_made(served):
    running, model, text = served
    prompt = "the cat sees a bird"
    with requests.post(f"http://{running.url}/v2/models/gpt/generate_stream",
                       json={"text_input": prompt, "max_tokens": 8}, timeout=60, stream=True) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line.removeprefix("data: ")) for line in r.iter_lines(decode_unicode=True)
                  if line.startswith("data: ")]
    ids = text.encode([prompt])[0].ids
    want = _want(model, ids, max_new_tokens=8)
    assert [t for e in events for t in e["output_ids"]] == want and len(events) == len(want) + 1
    assert "".join(e["text_output"] for e in events) == text.decode(want)
    assert events[-1]["finish_reason"] in ("stop", "length")


def test_a_client_that_hangs_up_frees_its_row(served, monkeypatch):
    import time

    running, _model, _text = served
    sched = running.server.models["gpt"].scheduler
    step = sched.runner.step_all
    monkeypatch.setattr(sched.runner, "step_all", lambda *a: (time.sleep(0.1), step(*a))[1])  # 10 tokens/s
    dropped = sched.dropped
    with requests.post(f"http://{running.url}/v2/models/gpt/generate_stream",
                       json={"input_ids": [5, 6, 7], "max_tokens": 20, "min_new_tokens": 20}, timeout=60,
                       stream=True) as r:
        next(r.iter_lines())  # the first token, then hang up, about 2 s before the last
    deadline = time.monotonic() + 1.5
    while sched.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sched.dropped == dropped + 1 and not sched.active and len(sched.free) == SLOTS


def test_stop_strings_end_a_served_generation_where_transformers_does(served):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    running, model, text = served
    prompt = "the cat sees a bird"
    ids = text.encode([prompt])[0].ids
    stop = text.decode(_want(model, ids)[2:3]).strip()  # the word the model makes third
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(text.tokenizer))
    want = _want(model, ids, stop_strings=[stop], tokenizer=tok)
    assert len(want) <= 3  # it stopped there (or earlier, where the word came sooner)
    for body in ({"text_input": prompt, "max_tokens": NEW, "stop": stop},
                 {"input_ids": ids, "parameters": {"max_tokens": NEW, "stop": [stop]}}):
        r = _post(running, "/v2/models/gpt/generate", body)
        assert r.status_code == 200, r.text
        assert r.json()["output_ids"] == want


def test_openai_client_completions_and_stream(served):
    import openai

    running, model, text = served
    client = openai.OpenAI(base_url=f"http://{running.url}/v1", api_key="none")
    prompt = SENTENCES[1]
    want = text.decode(_want(model, text.encode([prompt])[0].ids, max_new_tokens=6))
    got = client.completions.create(model="gpt", prompt=prompt, max_tokens=6, temperature=0)
    assert got.choices[0].text == want and got.usage.completion_tokens <= 6
    chunks = client.completions.create(model="gpt", prompt=prompt, max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in chunks) == want
    with pytest.raises(openai.BadRequestError, match="unknown parameter|not supported"):
        client.completions.create(model="gpt", prompt=prompt, max_tokens=6, n=2)


def test_seeded_sampling_is_the_same_as_transformers_with_that_seed(served):
    running, model, _text = served
    ids = [7, 9, 11, 13]
    r = _post(running, "/v2/models/gpt/generate", {"input_ids": ids, "temperature": 0.8, "top_k": 20, "seed": 5, "max_tokens": NEW})
    torch.manual_seed(5)
    assert r.json()["output_ids"] == _want(model, ids, do_sample=True, temperature=0.8, top_k=20)


def test_infer_with_token_ids_through_tritonclient(served):
    import tritonclient.http as http

    running, model, _text = served
    ids = np.array([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]], np.int64)
    mask = (ids != 0).astype(np.int64)
    inputs = [http.InferInput("input_ids", list(ids.shape), "INT64"), http.InferInput("attention_mask",
                                                                                       list(mask.shape), "INT64")]
    inputs[0].set_data_from_numpy(ids)
    inputs[1].set_data_from_numpy(mask)
    out = running.client().infer("gpt", inputs, parameters={"max_new_tokens": 5}).as_numpy("output_ids")
    want = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=5)
    assert out.tolist() == want.tolist()
    import tritonclient.grpc as grpcclient  # the same request over gRPC joins the same continuous batch

    over_grpc = [grpcclient.InferInput("input_ids", list(ids.shape), "INT64"),
                 grpcclient.InferInput("attention_mask", list(mask.shape), "INT64")]
    over_grpc[0].set_data_from_numpy(ids)
    over_grpc[1].set_data_from_numpy(mask)
    client = grpcclient.InferenceServerClient(running.grpc_url)
    assert client.infer("gpt", over_grpc, parameters={"max_new_tokens": 5}).as_numpy("output_ids").tolist() == \
        want.tolist()
    # the batcher's queue policy does not apply to the continuous batch: said, not ignored
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="a generation file admits requests in arrival order"):
        running.client().infer("gpt", inputs, priority=1)


def test_generation_requests_refused_in_one_line(served):
    running, _model, _text = served
    r = _post(running, "/v2/models/gpt/generate", {"input_ids": [5, 6], "bogus": 1})
    assert r.status_code == 400 and "unknown parameter 'bogus'" in r.json()["error"]
    r = _post(running, "/v2/models/gpt/generate", {"input_ids": list(range(5, 25))})
    assert r.status_code == 400 and "more than the largest prompt bucket 16" in r.json()["error"]
    r = _post(running, "/v2/models/gpt/generate", {"input_ids": [5, 6], "max_tokens": 30})
    assert r.status_code == 400 and "the file's cache holds 26" in r.json()["error"]
    r = _post(running, "/v1/completions", {"model": "nope", "prompt": "the cat"})
    assert r.status_code == 400 and "not a generation model served here" in r.json()["error"]["message"]


def test_unloading_answers_the_running_and_waiting_requests_first(served):
    """Unloading a generation file (repository API) finishes the requests in its rows and those
    waiting for one, refusing new ones; then the name is gone."""
    import time

    from archfit.serve import Server, load_models

    running, model, _text = served
    r = Running(Server(load_models([f"gpt={running.path}"]), files={"gpt": running.path}))
    try:
        g = torch.Generator().manual_seed(5)
        prompts = [torch.randint(5, len(WORDS), (n,), generator=g).tolist() for n in (3, 9, 5, 12, 7, 4, 8, 6)]
        answers = [None] * len(prompts)

        def client(i):
            answers[i] = _post(r, "/v2/models/gpt/generate", {"input_ids": prompts[i], "max_tokens": NEW})

        sched = r.server.models["gpt"].scheduler
        step = sched._step  # slowed, so that requests pile up behind the rows whatever the host's speed
        sched._step = lambda: (time.sleep(0.02), step())[1]
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        held = 0
        while held <= SLOTS and time.monotonic() < deadline:  # unload while rows run and requests wait
            with sched.cv:
                held = len(sched.active) + len(sched.waiting)
        status, body, _ = r.post("/v2/repository/models/gpt/unload", b"")
        assert status == 200, body
        for t in threads:
            t.join()
        answered = [(ids, a) for ids, a in zip(prompts, answers) if a.status_code == 200]
        assert len(answered) >= held > SLOTS  # every request held at the unload answered, waiting ones too
        for ids, a in answered:
            assert a.json()["output_ids"] == _want(model, ids)
        for a in answers:  # sent after the unload began: refused (503 while it drains, 404 after), not left hanging
            assert a.status_code == 200 or (a.status_code == 503 and "being unloaded" in a.text) or \
                (a.status_code == 404 and "no model 'gpt'" in a.text)
        after = _post(r, "/v2/models/gpt/generate", {"input_ids": prompts[0]})
        assert after.status_code == 404 and "no model 'gpt'" in after.json()["error"]
    finally:
        r.stop()
