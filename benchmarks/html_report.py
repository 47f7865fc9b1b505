"""The HTML fit report at full size, opened in headless Chromium (Debian's, driven by Playwright).

Pages: BERT-base on inf1 and openvino side by side, YOLOv4 on openvino and inf2 (per compiled
region, with its host regions), the tiny custom-op MLP the tests open, and a stress page: a
48-layer BERT (BERT-base widths, four times the layers) for a graph of over a thousand nodes per
target (archfit's graph keeps high-level ops such as linear and attention whole, so BERT-base
itself is ~300 nodes, not the ~1,000 of a core-ATen graph). Per page: file size, and over fresh browser pages (no cache): the time from navigation
start to the page's script having built everything (`window.archfitReadyAt`, which is when it
answers clicks), then the time one click takes to expand the first collapsed block and to sort the
CPU-node table. Also writes the MLP page's screenshot that the README shows.

    .venv/bin/python benchmarks/html_report.py [--runs 7] [--screenshot docs/report.png]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import archfit
from archfit import zoo

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions"]


def _bert_48():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(num_hidden_layers=48)).eval()
    ids = torch.randint(0, 30522, (1, 128))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def pages() -> tuple[dict[str, str], dict[str, int]]:
    out, sizes = {}, {}
    for name, targets in (("mlp-custom-op", ["openvino", "inf2"]), ("bert-base", ["inf1", "openvino"]),
                          ("yolov4", ["openvino", "inf2"]), ("bert-48-layers", ["inf1", "openvino"])):
        t = time.perf_counter()
        model, inputs = _bert_48() if name == "bert-48-layers" else zoo.build(name, tiny=name == "mlp-custom-op")
        analysis = archfit.analyze(model, inputs, targets=targets)
        out[name] = analysis.to_html()
        sizes[name] = max((len(r.graph.nodes) for r in analysis.reports if r.graph is not None), default=0)
        print(f"{name}: analysed in {time.perf_counter() - t:.0f} s; {len(analysis.reports)} reports, "
              f"largest graph {sizes[name]} nodes", flush=True)
    return out, sizes


def measure(browser, path: Path, runs: int) -> dict:
    ready, painted, expand, sort = [], [], [], []
    for _ in range(runs):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        page.wait_for_function("window.archfitReady === true", timeout=30_000)
        ready.append(page.evaluate("window.archfitReadyAt"))
        # the next painted frame after that, read back through Playwright (an upper bound)
        painted.append(page.evaluate("new Promise(r => requestAnimationFrame(() => setTimeout(() => r(performance.now()))))"))
        # one click each, timed inside the page from the click to the next painted frame
        expand.append(page.evaluate("""() => new Promise(done => {
            const row = document.querySelector('.row.mod[aria-expanded=false]');
            const t = performance.now(); row.click();
            requestAnimationFrame(() => done(performance.now() - t)); })"""))
        if page.locator("#cpu-table th[data-key=flops]").count():
            sort.append(page.evaluate("""() => new Promise(done => {
                const th = document.querySelector('#cpu-table th[data-key=flops]');
                const t = performance.now(); th.click();
                requestAnimationFrame(() => done(performance.now() - t)); })"""))
        assert not errors, errors
        context.close()
    return {"ready_ms": ready, "painted_ms": painted, "expand_ms": expand, "sort_ms": sort}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--screenshot", type=Path, default=None)
    opts = ap.parse_args()
    from playwright.sync_api import sync_playwright

    print(f"torch threads {torch.get_num_threads()}; Chromium {CHROMIUM} headless")
    html, nodes = pages()
    with tempfile.TemporaryDirectory() as d, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        print(f"Chromium {browser.version}")
        print("| page | graph nodes | file size | script done: median (max) ms | painted: median (max) ms "
              "| expand a block: median ms | sort CPU table: median ms |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, text in html.items():
            path = Path(d) / f"{name}.html"
            path.write_text(text)
            m = measure(browser, path, opts.runs)
            sort = f"{statistics.median(m['sort_ms']):.0f}" if m["sort_ms"] else "-"
            print(f"| {name} | {nodes[name]} | {path.stat().st_size / 2**20:.2f} MiB | "
                  f"{statistics.median(m['ready_ms']):.0f} ({max(m['ready_ms']):.0f}) | "
                  f"{statistics.median(m['painted_ms']):.0f} ({max(m['painted_ms']):.0f}) | "
                  f"{statistics.median(m['expand_ms']):.0f} | {sort} |", flush=True)
            if name == "mlp-custom-op" and opts.screenshot is not None:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(path.as_uri())
                page.wait_for_function("window.archfitReady === true")
                page.locator(".row.mod[aria-expanded=false]").first.click()  # one block opened, as a user would
                page.screenshot(path=str(opts.screenshot), full_page=True)
                page.close()
                print(f"screenshot: {opts.screenshot}")
        browser.close()


if __name__ == "__main__":
    main()
