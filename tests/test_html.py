"""The HTML fit report: its data, and the page driven in a real browser (Debian's Chromium,
headless, through Playwright; installed by `make install`)."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import archfit
from archfit.report.graph import HOST
from conftest import cli

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# the machine's network is closed: without these Chromium keeps trying to reach Google's hosts
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-extensions"]


@pytest.fixture(scope="module")
def mlp_analysis(mlp_custom):
    model, inputs = mlp_custom
    return archfit.analyze(model, inputs, targets=["openvino", "inf2"])


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, path):
    """The page at `path`, once its script has run; with every console error and page error."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: errors.append(f"network request {r.url}") if not r.url.startswith(("file:", "data:"))
            else None)
    page.goto(path.as_uri())
    page.wait_for_function("window.archfitReady === true", timeout=10_000)
    return page, errors


def test_graph_view_places_every_node_and_sizes_every_crossing(mlp_analysis):
    report = mlp_analysis["openvino"]
    g = report.graph
    names = {n.name for n in g.nodes}
    assert {p for part in report.partitions for p in part.nodes} <= names
    (cpu,) = [n for n in g.nodes if n.op == "archfit_zoo.softclip"]
    assert cpu.place == HOST and cpu.reason == "no lowering on this target" and "toy.py" in cpu.source
    assert cpu.module == ()  # called in the model's own forward, not in a submodule
    linears = [n for n in g.nodes if n.op == "aten.linear"]
    assert linears and all(n.module and n.module[-1][1] == "Linear" for n in linears)  # path and class
    # the custom op reads partition 0's output and partition 1 reads its result: each crossing
    # is as large as the partition boundary the partitioner reported
    into_cpu = [c for c in g.crossings if c.dst_place == HOST and g.nodes[c.src].place == 0]
    out_of_cpu = [c for c in g.crossings if g.nodes[c.src] is cpu]
    assert [c.dst_place for c in out_of_cpu] == [1]
    assert sum(c.nbytes for c in into_cpu) == sum(b.nbytes for b in report.partitions[0].outputs) > 0
    assert out_of_cpu[0].nbytes == sum(b.nbytes for b in report.partitions[1].inputs if b.name == cpu.name)
    # not in the report's JSON: it is the graph, not the fit
    assert "graph" not in report.to_dict()


def test_page_is_one_file_that_cannot_be_broken_out_of(mlp_analysis):
    page = mlp_analysis.to_html()
    assert "<script src" not in page and "<link" not in page and "http://" not in page and "https://" not in page
    from archfit.report.html import render_page

    import dataclasses

    r = mlp_analysis["openvino"]
    evil = dataclasses.replace(r, model="</script><script>alert(1)</script>")
    out = render_page("x", [(evil.model, [evil])])
    assert out.count("</script>") == 2  # the data block's and the code block's own, nothing from the data
    data = re.search(r'<script type="application/json" id="archfit-data">(.*?)</script>', out, re.S).group(1)
    assert json.loads(data)["sections"][0]["label"] == evil.model


def test_page_in_chromium_shows_the_cpu_node_expands_sorts_and_screenshots(mlp_analysis, browser, tmp_path):
    path = tmp_path / "mlp.html"
    path.write_text(mlp_analysis.to_html())
    page, errors = _open(browser, path)
    # both targets side by side, with their verdicts
    cards = page.locator(".card")
    assert cards.count() == 2 and "fits with fallback" in cards.nth(0).inner_text()
    assert "ESTIMATED" in cards.nth(1).inner_text()  # inf2: the roofline estimate, and its calibration error
    assert "Calibration: typical error" in cards.nth(1).inner_text()
    # the CPU node, its reason and its source line, in the table
    row = page.locator("#cpu-table tbody tr", has_text="archfit_zoo.softclip")
    assert row.count() == 1
    text = row.inner_text()
    assert "no lowering on this target" in text and re.search(r"toy\.py:\d+", text)
    # expand a collapsed block: its nodes appear, coloured by where they run
    collapsed = page.locator(".row.mod[aria-expanded=false]").first
    path_name = collapsed.get_attribute("data-path")
    before = page.locator(".row.node:visible").count()
    collapsed.click()
    assert page.locator(f'.row.mod[data-path="{path_name}"]').get_attribute("aria-expanded") == "true"
    assert page.locator(".row.node:visible").count() > before
    # sort the CPU table by FLOPs, then by op: the header says so and the rows follow
    header = page.locator("#cpu-table th[data-key=op]")
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    ops = page.locator("#cpu-table tbody tr td:nth-child(2)").all_inner_texts()
    assert ops == sorted(ops)
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    assert page.locator("#cpu-table tbody tr td:nth-child(2)").all_inner_texts() == sorted(ops, reverse=True)
    # clicking the node in the table finds it in the graph
    page.locator("#cpu-table tbody tr a", has_text=row.locator("a").inner_text()).click()
    assert page.locator('.row.node[data-node="%s"]' % row.locator("a").inner_text()).is_visible()
    # the second target's tab redraws the graph for it
    page.locator('.tabs button[data-target="inf2"]').click()
    assert page.locator('.tabs button[data-target="inf2"]').get_attribute("aria-selected") == "true"
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert errors == []
    page.close()


def test_cli_writes_the_page_for_analyze_and_compile(tmp_path, browser):
    a, c = tmp_path / "a.html", tmp_path / "c.html"
    r = cli("analyze", "mlp-custom-op", "--tiny", "-t", "openvino", "--html", str(a))
    assert r.returncode == 0, r.stderr
    assert f"wrote {a}" in r.stdout and a.read_text().startswith("<!DOCTYPE html>")
    # inf2: partitions are kept without timing them (the emulation's speed is not the chip's), so
    # the page has NaN timings to survive, the estimate and the validation
    r = cli("compile", "mlp-custom-op", "--tiny", "-t", "inf2", "--html", str(c))
    assert r.returncode == 0, r.stderr
    page, errors = _open(browser, c)
    body = page.locator("main").inner_text()
    assert "compiled vs eager PyTorch" in body and "PASS" in body  # validation per output
    assert "ESTIMATED" in body and "measured latency per partition" not in body
    assert "speedup" in page.locator("#latency").inner_text()
    assert errors == []
    page.close()
    r = cli("analyze", "mlp-custom-op", "--tiny", "--html", str(tmp_path / "missing" / "a.html"))
    assert r.returncode == 1 and "directory" in r.stderr and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_measured_partition_latencies_are_shown(mlp_analysis, browser, tmp_path):
    import dataclasses

    from archfit.core.compile import PartitionTiming

    r = mlp_analysis["openvino"]
    timed = dataclasses.replace(r, timings={0: PartitionTiming(1.5, 0.25, 0.5, False, 1.0, 1.25),
                                            1: PartitionTiming(1.5, 0.125, 0.375, True)})
    path = tmp_path / "timed.html"
    path.write_text(timed.to_html())
    page, errors = _open(browser, path)
    rows = page.locator("table.timings tr").all_inner_texts()
    assert len(rows) == 3 and "0.250" in rows[1] and "1.000 / 1.250" in rows[1] and "cache" in rows[2]
    assert errors == []
    page.close()
