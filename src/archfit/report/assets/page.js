/* archfit fit report page. Plain DOM, no library: the page must open with no network, and the
   graph view only needs a tree of rows built on demand (BERT-base: ~1,000 ATen nodes). */
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("archfit-data").textContent);
  const HOST = -1, IO = -2;
  const PCOL = ["#1c7ed6", "#0ca678", "#7048e8", "#1098ad", "#4263eb", "#37b24d", "#ae3ec9", "#15aabf"];

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k === "style") e.style.cssText = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const k of kids.flat()) if (k !== null && k !== undefined && k !== false)
      e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    return e;
  }
  const colour = (p) => p === HOST ? "var(--cpu)" : p === IO ? "var(--io)" : PCOL[p % PCOL.length];
  const placeName = (p) => p === HOST ? "CPU" : p === IO ? "input/output" : "partition " + p;
  function flops(f) {
    for (const [u, s] of [["T", 1e12], ["G", 1e9], ["M", 1e6], ["k", 1e3]]) if (f >= s) return (f / s).toFixed(2) + " " + u + "FLOP";
    return Math.round(f) + " FLOP";
  }
  function bytes(b) {
    for (const [u, s] of [["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]]) if (b >= s) return (b / s).toFixed(1) + " " + u;
    return Math.round(b) + " B";
  }
  const pct = (x) => (100 * x).toFixed(1) + "%";
  const meter = (parts) => el("div", { class: "meter" }, parts.filter(([w]) => w > 0).map(([w, c, t]) =>
    el("span", { style: `width:${(100 * w).toFixed(3)}%;background:${c}`, title: t })));

  // ---------- summary cards ----------
  function verdictClass(v) { return v === "fits" ? "fits" : v === "poor fit" ? "poor" : "fallback"; }

  function card(section, r) {
    const kv = el("dl", { class: "kv" },
      el("dt", { text: "precision" }), el("dd", { text: r.precision + (r.emulated ? " (accelerator profile, emulated on this CPU)" : "") }),
      el("dt", { text: "by count" }), el("dd", {}, `${r.supported_ops}/${r.total_ops} ops on target (${pct(r.op_share)})`,
        meter([[r.op_share, PCOL[0], "on target"], [1 - r.op_share, "var(--cpu)", "CPU"]])),
      el("dt", { text: "by FLOPs" }), el("dd", {}, `${flops(r.supported_flops)} / ${flops(r.total_flops)} (${pct(r.flop_share)})`,
        flopBar(r)),
      el("dt", { text: "partitions" }), el("dd", { text: String(r.partitions.length) }));
    const c = el("div", { class: "card", "data-target": r.target },
      el("h3", {}, `${section.label} on ${r.target} `, el("span", { class: "verdict " + verdictClass(r.verdict), text: r.verdict })),
      el("div", { class: "note", text: r.verdict_reason }), kv);
    if (r.estimate) c.append(estimate(r.estimate));
    if (r.validation) c.append(validation(r.validation));
    // not measured when the compile skipped the payoff check (accelerator profiles, check_payoff=False)
    const measured = Object.entries(r.timings || {}).filter(([, t]) => t.compiled_ms !== null);
    if (measured.length) c.append(timings(measured));
    if (r.compile_seconds !== null && r.compile_seconds !== undefined)
      c.append(el("div", { class: "note", text: `compile time ${r.compile_seconds.toFixed(1)} s` }));
    return c;
  }

  function flopBar(r) {  // FLOP share per partition, then the CPU
    const total = r.total_flops || 1;
    const parts = r.partitions.map((p) => [p.flops / total, colour(p.index), `partition ${p.index}: ${flops(p.flops)} (${pct(p.flops / total)})`]);
    const cpu = r.total_flops - r.supported_flops;
    parts.push([cpu / total, "var(--cpu)", `CPU: ${flops(cpu)} (${pct(cpu / total)})`]);
    return meter(parts);
  }

  function estimate(e) {
    const cal = e.calibration_error === null || e.calibration_error === undefined ? "" :
      ` Calibration: typical error x${Math.exp(e.calibration_error).toFixed(2)} (rms log error ${e.calibration_error.toFixed(3)}) against Neuron's published latencies.`;
    return el("div", { class: "estimate" },
      el("b", { text: `ESTIMATED ${e.total_ms.toFixed(2)} ms on ${e.chip}` }), " (roofline, not a measurement): ",
      `device ${e.device_ms.toFixed(2)} + transfer ${e.transfer_ms.toFixed(3)} + CPU fallback ${e.host_ms.toFixed(2)} ms (measured here). `,
      el("span", { class: "note", text: `utilisation ${e.utilisation.toFixed(2)}, ${e.call_overhead_ms.toFixed(2)} ms per device call.${cal}` }));
  }

  function validation(v) {
    const rows = [];
    for (const c of v.checks) for (const o of c.outputs)
      rows.push(el("tr", {}, el("td", { text: c.label }), el("td", { text: o.output }), el("td", { class: "num", text: o.max_abs.toExponential(2) }),
        el("td", { class: "num", text: o.max_rel.toExponential(2) }), el("td", { class: o.ok ? "ok" : "bad", text: o.ok ? "yes" : "NO" })));
    return el("div", {}, el("h3", {}, "compiled vs eager PyTorch: ", el("span", { class: v.ok ? "ok" : "bad", text: v.ok ? "PASS" : "FAIL" }),
      el("span", { class: "note", text: ` (atol ${v.atol} + rtol ${v.rtol} x max|eager|)` })),
      el("table", { class: "validation" }, el("tr", {}, ["inputs", "output", "max abs", "max rel", "ok"].map((h) => el("th", { text: h }))), rows));
  }

  const ms = (x) => x === null || x === undefined ? "-" : x.toFixed(3);

  function timings(measured) {
    const rows = measured.map(([i, t]) => el("tr", {},
      el("td", {}, el("i", { class: "chip", style: "background:" + colour(+i) }), "partition " + i),
      el("td", { class: "num", text: ms(t.compiled_ms) }), el("td", { class: "num", text: ms(t.eager_ms) }),
      el("td", { class: "num", text: t.model_ms_on_target === null ? "-" : ms(t.model_ms_on_target) + " / " + ms(t.model_ms_in_pytorch) }),
      el("td", { text: t.cached ? "cache" : "" })));
    return el("div", {}, el("h3", { text: "measured latency per partition (ms, on this machine)" }),
      el("table", { class: "timings" }, el("tr", {}, ["", "on target", "in PyTorch", "whole model: target / PyTorch", ""].map((h) =>
        el("th", { class: h ? "num" : "", text: h }))), rows));
  }

  // ---------- the graph: module hierarchy, coloured by where each node runs ----------
  function hierarchy(g) {
    const root = { path: "", kind: "", kids: [], index: new Map(), count: {}, flops: 0, n: 0, cross: 0, depth: 0 };
    const out = new Map();  // node index -> crossings leaving it
    for (const [src, dst, nb] of g.crossings) { if (!out.has(src)) out.set(src, []); out.get(src).push([dst, nb]); }
    const parentOf = new Map();
    g.nodes.forEach((n, i) => {
      const [, , chain, place, fl] = n;
      const crossed = (out.get(i) || []).reduce((a, [, nb]) => a + nb, 0);
      let cur = root;
      const visit = (m) => { m.count[place] = (m.count[place] || 0) + 1; m.flops += fl; m.n += 1; m.cross += crossed; };
      visit(root);
      for (const mid of chain) {
        let next = cur.index.get(mid);
        if (!next) {
          const [path, kind] = g.modules[mid];
          next = { path, kind, kids: [], index: new Map(), count: {}, flops: 0, n: 0, cross: 0, depth: cur.depth + 1, parent: cur };
          cur.index.set(mid, next); cur.kids.push(next);
        }
        cur = next; visit(cur);
      }
      cur.kids.push(i); parentOf.set(i, cur);
    });
    return { root, out, parentOf };
  }

  function graphView(r, host) {
    const g = r.graph;
    host.replaceChildren();
    if (!g) { host.append(el("p", { class: "note", text: "no graph recorded for this report" })); return; }
    const H = hierarchy(g);
    const rank = (p) => p >= 0 ? p : 1e6 - p;  // partitions in order, then the CPU, then inputs/outputs
    const places = [...new Set(g.nodes.map((n) => n[3]))].sort((a, b) => rank(a) - rank(b));
    host.append(el("div", { class: "legend" }, places.map((p) => el("span", {}, el("i", { style: "background:" + colour(p) }), placeName(p))),
      el("span", {}, el("span", { class: "cross", text: "\u2192 P1 3 KiB" }), " a tensor crossing to another place, with its size")));
    const strip = el("canvas", { class: "strip", title: "every node in graph order; red ticks: tensors crossing a boundary; click to find a node" });
    host.append(strip);
    const tree = el("div", { class: "tree", role: "tree" });
    tree.append(el("div", { class: "row head" }, el("span", { text: "module / node" }), el("span", { text: "class / op" }),
      el("span", { class: "num", text: "nodes" }), el("span", { class: "num", text: "FLOPs" }), el("span", { text: "where it runs" })));
    host.append(tree);
    const rowOf = new Map();  // node index -> row element
    const opened = new Set();

    function modRow(m) {
      const bar = el("div", { class: "bar" }, Object.entries(m.count).sort((a, b) => b[0] - a[0]).map(([p, k]) =>
        el("span", { style: `width:${(100 * k / m.n).toFixed(2)}%;background:${colour(+p)}`, title: `${placeName(+p)}: ${k} nodes` })));
      const tog = el("span", { class: "toggle", text: "\u25b8" });
      const kids = el("div", { class: "kids", hidden: true });
      const name = m.path.split(".").pop() || m.path;
      const row = el("div", { class: "row mod", role: "treeitem", "aria-expanded": "false", "data-path": m.path },
        el("span", { class: "name", style: `padding-left:${(m.depth - 1) * 14}px`, title: m.path }, tog, name),
        el("span", { class: "mono", text: m.kind }), el("span", { class: "num", text: m.n }), el("span", { class: "num", text: flops(m.flops) }),
        el("span", {}, bar, m.cross ? el("span", { class: "note", text: `crossings ${bytes(m.cross)}` }) : null));
      const wrap = el("div", {}, row, kids);
      const toggle = () => {
        if (!opened.has(m)) { opened.add(m); kids.append(...m.kids.map((k) => typeof k === "number" ? nodeRow(k, m.depth) : modRow(k))); }
        kids.hidden = !kids.hidden;
        row.setAttribute("aria-expanded", String(!kids.hidden));
        tog.textContent = kids.hidden ? "\u25b8" : "\u25be";
      };
      row.addEventListener("click", toggle);
      m.toggle = toggle; m.kidsEl = kids;
      return wrap;
    }

    function nodeRow(i, depth) {
      const [name, op, , place, fl, shape, , source, reason, detail] = g.nodes[i];
      const badges = (H.out.get(i) || []).map(([dst, nb]) => el("span", { class: "cross", title: `this tensor (${shape}) moves to ${placeName(dst)}`,
        text: `\u2192 ${dst === HOST ? "CPU" : "P" + dst} ${bytes(nb)}` }));
      const why = place === HOST && reason ? `${reason}: ${detail}` : "";
      const row = el("div", { class: "row node", role: "treeitem", "data-node": name, title: [name, shape, source, why].filter(Boolean).join("\n") },
        el("span", { class: "name mono", style: `padding-left:${depth * 14 + 14}px` }, el("i", { class: "chip", style: "background:" + colour(place) }), name),
        el("span", { class: "mono", text: op }), el("span", { class: "num mono", text: shape }), el("span", { class: "num", text: fl ? flops(fl) : "" }),
        el("span", { class: "why" }, placeName(place), why ? " \u2014 " + why : "", badges));
      rowOf.set(i, row);
      return row;
    }

    // Top level, then open level by level while the view stays short: layers and blocks show,
    // ATen nodes wait for a click (a module holding only nodes stays closed).
    tree.append(...H.root.kids.map((k) => typeof k === "number" ? nodeRow(k, 0) : modRow(k)));
    const isMod = (k) => typeof k !== "number";
    let frontier = H.root.kids.filter((k) => isMod(k) && k.kids.some(isMod)), shown = H.root.kids.length;
    while (frontier.length) {
      const add = frontier.reduce((a, m) => a + m.kids.length, 0);
      if (shown + add > 40) break;
      frontier.forEach((m) => m.toggle());
      shown += add;
      frontier = frontier.flatMap((m) => m.kids.filter((k) => isMod(k) && k.kids.some(isMod)));
    }

    function reveal(i) {
      const chain = [];
      for (let m = H.parentOf.get(i); m && m !== H.root; m = m.parent) chain.unshift(m);
      for (const m of chain) if (!m.kidsEl || m.kidsEl.hidden) m.toggle();
      const row = rowOf.get(i);
      if (row) { row.scrollIntoView({ block: "center" }); row.style.outline = "2px solid #212529"; setTimeout(() => row.style.outline = "", 1500); }
    }
    host.reveal = (name) => { const i = g.nodes.findIndex((n) => n[0] === name); if (i >= 0) reveal(i); };

    requestAnimationFrame(() => drawStrip(strip, g, reveal));
  }

  function drawStrip(canvas, g, reveal) {
    const w = canvas.clientWidth || 800, h = canvas.clientHeight || 46, n = g.nodes.length;
    canvas.width = w; canvas.height = h;
    const ctx = canvas.getContext("2d"), css = getComputedStyle(document.documentElement);
    const fill = (p) => p === HOST ? css.getPropertyValue("--cpu") : p === IO ? css.getPropertyValue("--io") : PCOL[p % PCOL.length];
    const x = (i) => (i / n) * w, bw = Math.max(1, w / n);
    g.nodes.forEach((node, i) => { ctx.fillStyle = fill(node[3]); ctx.fillRect(x(i), 14, bw, h - 14); });
    ctx.fillStyle = css.getPropertyValue("--bad");
    for (const [src] of g.crossings) ctx.fillRect(x(src), 0, Math.max(1, bw), 12);
    canvas.addEventListener("click", (ev) => {
      const r = canvas.getBoundingClientRect();
      reveal(Math.min(n - 1, Math.floor(((ev.clientX - r.left) / r.width) * n)));
    });
  }

  // ---------- CPU nodes: a sortable table ----------
  function cpuTable(r, host, graphHost) {
    host.replaceChildren();
    const g = r.graph;
    if (!g) return;
    const mods = g.modules;
    const rows = g.nodes.filter((n) => n[3] === HOST && n[8]).map((n) => ({
      node: n[0], op: n[1], reason: n[8], detail: n[9], flops: n[4], source: n[7],
      module: n[2].length ? mods[n[2][n[2].length - 1]][0] : "" }));
    if (!rows.length) { host.append(el("p", { text: "every node runs on the target" })); return; }
    const cols = [["node", "node"], ["op", "op"], ["reason", "reason"], ["flops", "FLOPs"], ["module", "module"], ["source", "source line"]];
    const filter = el("input", { class: "filter", placeholder: "filter rows", type: "search" });
    const head = el("tr", {}, cols.map(([k, t]) => el("th", { class: "sortable" + (k === "flops" ? " num" : ""), "data-key": k, text: t })));
    const body = el("tbody");
    const table = el("table", { id: "cpu-table" }, el("thead", {}, head), body);
    let key = null, dir = 1;
    function fillBody() {
      const q = filter.value.toLowerCase();
      const shown = rows.filter((r) => !q || Object.values(r).join(" ").toLowerCase().includes(q));
      if (key) shown.sort((a, b) => (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0) * dir);
      body.replaceChildren(...shown.map((r) => el("tr", { "data-node": r.node },
        el("td", {}, el("a", { href: "#graph", class: "mono", onclick: () => graphHost.reveal(r.node), text: r.node })),
        el("td", { class: "mono", text: r.op }), el("td", { text: `${r.reason}: ${r.detail}` }),
        el("td", { class: "num", text: flops(r.flops) }), el("td", { class: "mono", text: r.module }),
        el("td", { class: "mono", text: r.source || "-" }))));
    }
    head.addEventListener("click", (ev) => {
      const th = ev.target.closest("th"); if (!th) return;
      dir = key === th.dataset.key ? -dir : (th.dataset.key === "flops" ? -1 : 1); key = th.dataset.key;
      head.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
      fillBody();
    });
    filter.addEventListener("input", fillBody);
    fillBody();
    host.append(el("p", { class: "note", text: `${rows.length} node${rows.length === 1 ? "" : "s"} run${rows.length === 1 ? "s" : ""} in PyTorch on the CPU; click a header to sort, a node to find it in the graph` }),
      filter, el("div", { class: "scroll" }, table));
  }

  // ---------- regions, buckets ----------
  function regions(rp) {
    return el("div", {}, el("h2", { text: "regions: what runs compiled and what stays in Python on the host" }),
      el("p", { class: "note", text: rp.reason }),
      el("table", { id: "regions" }, el("tr", {}, ["region", "runs", "why"].map((h) => el("th", { text: h }))),
        rp.regions.map((x) => el("tr", {}, el("td", { class: "mono", text: x.path }),
          el("td", {}, el("i", { class: "chip", style: "background:" + (x.compiled ? PCOL[0] : "var(--hostregion)") }),
            x.compiled ? "compiled" : "host region (Python)"),
          el("td", { text: x.why })))));
  }

  function buckets(b) {
    const wrap = el("div", {}, el("h2", { text: "buckets" }));
    if (b.choice) wrap.append(el("p", { text: `chosen from the size histogram: expected padding waste ${pct(b.choice.padding_waste)}, ` +
      `expected speedup over pad-to-max ${b.choice.speedup.toFixed(2)}x (${pct(b.choice.speedup / b.choice.ideal_speedup)} of the ${b.choice.ideal_speedup.toFixed(2)}x exact sizes would give)` }));
    wrap.append(el("table", { id: "buckets" }, el("tr", {}, ["bucket", "partitions", "CPU ops", "validation", "max rel err"].map((h) => el("th", { text: h }))),
      b.rows.map((x) => el("tr", {}, el("td", { class: "num", text: x.size }), el("td", { class: "num", text: x.partitions }),
        el("td", { class: "num", text: x.cpu_ops }), el("td", { class: x.ok ? "ok" : "bad", text: x.ok === null ? "-" : x.ok ? "PASS" : "FAIL" }),
        el("td", { class: "num", text: x.max_rel === null ? "-" : x.max_rel.toExponential(2) })))));
    if (b.batch) wrap.append(el("p", { class: "note", text: `dynamic batch: compiled at batch ${b.batch}; larger batches run in chunks, smaller ones are padded` }));
    return wrap;
  }

  // ---------- page ----------
  const main = document.querySelector("main");
  const cards = el("div", { class: "cards" });
  const pairs = [];
  for (const s of D.sections) for (const r of s.reports) { cards.append(card(s, r)); pairs.push([s, r]); }
  main.append(el("h2", { text: "fit per target" }), cards);
  if (D.latency) main.append(el("p", { id: "latency", text: D.latency }));
  if (D.regions) main.append(regions(D.regions));
  if (D.buckets) main.append(buckets(D.buckets));
  const graphHost = el("div", { id: "graph-view" }), cpuHost = el("div", { id: "cpu-view" });
  const tabs = el("div", { class: "tabs", role: "tablist" });
  function select(k) {
    tabs.querySelectorAll("button").forEach((b, j) => b.setAttribute("aria-selected", String(j === k)));
    graphView(pairs[k][1], graphHost);
    cpuTable(pairs[k][1], cpuHost, graphHost);
  }
  pairs.forEach(([s, r], k) => tabs.append(el("button", { role: "tab", "data-target": r.target, onclick: () => select(k),
    text: (D.sections.length > 1 ? s.label + " \u00b7 " : "") + r.target })));
  main.append(el("h2", { id: "graph", text: "graph, by module: where each node runs" }), tabs, graphHost,
    el("h2", { text: "nodes on the CPU" }), cpuHost);
  if (pairs.length) select(0);
  window.archfitReadyAt = performance.now();  // read by benchmarks/html_report.py
  window.archfitReady = true;
})();
