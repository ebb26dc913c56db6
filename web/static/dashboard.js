// The operations dashboard: it subscribes to the "dashboard" group over the
// socket and draws each snapshot the publisher pushes (queues, workers,
// processes, failures, and 15-minute charts drawn as inline SVG). It never
// polls. It starts just before the latest snapshot (the page's data-after
// and data-epoch), so it draws that one at once instead of replaying the
// retained history. Admins get the operator actions, which call
// /api/admin/...; the next snapshot shows their effect. Every string from
// the server is rendered with textContent, never as HTML.
import {TaskStream} from "./taskstream.js";
import {api, showConnection} from "./common.js";

const body = document.body;
const admin = body.dataset.admin === "true";
const $ = (sel) => document.querySelector(sel);

const ts = new TaskStream({url: location.origin});
showConnection(ts, $("#conn"));

let latest = null; // the newest snapshot not drawn yet
let frame = 0;

ts.subscribe("dashboard", {
  onEvent(f) {
    if (f.event !== "stats") return;
    // A reconnect may deliver several snapshots at once: draw the newest.
    latest = f.data;
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; draw(latest); });
  },
  // e.g. forbidden when the session ended: say so where the time of the
  // last update is, which no longer changes.
  onError(e) { $("#dash-status").textContent = `Cannot watch the dashboard: ${e.message}`; },
}, {after: Number(body.dataset.after) || 0, epoch: body.dataset.epoch || undefined});

function draw(s) {
  if (!s) return;
  const at = new Date(s.at);
  $("#dash-status").textContent = `Updated ${at.toLocaleTimeString()} · every ${fmtMs(s.interval_ms)}`;
  $("#dash-status").dataset.at = s.at;
  const problems = s.problems || [];
  $("#dash-problems").hidden = problems.length === 0;
  $("#dash-problems").textContent = problems.length ? "Could not read: " + problems.join("; ") : "";
  drawQueues(s.queues || []);
  drawWorkers(s.workers || [], at);
  drawProcesses(s.processes || [], at);
  drawFailures(s.failures || [], at);
  drawCharts(s);
}

// ---- tables ----------------------------------------------------------------------
//
// Rows are kept by key and updated in place: a snapshot every second must
// not replace the button under the pointer (a click whose mousedown and
// mouseup land on different elements is lost).

/**
 * sync makes table's body show items in order. row(item) describes one:
 * {key, data: {attr: value}, cells: [cell], actions: [{label, method, path}]}
 * where a cell is {text, cls?, title?} or {sig, nodes: () => [Node], cls?}
 * (custom content, rebuilt only when sig changes).
 */
function sync(table, items, row) {
  const tbody = table.querySelector("tbody");
  const old = new Map([...tbody.children].map((tr) => [tr.dataset.key, tr]));
  const rows = items.map((item) => {
    const r = row(item);
    let tr = old.get(r.key);
    old.delete(r.key);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.key = r.key;
    }
    for (const [k, v] of Object.entries(r.data || {})) tr.dataset[k] = v;
    const want = r.cells.length + (r.actions ? 1 : 0);
    while (tr.children.length > want) tr.lastChild.remove();
    while (tr.children.length < want) tr.append(document.createElement("td"));
    r.cells.forEach((c, i) => setCell(tr.children[i], c));
    if (r.actions) setActions(tr.children[r.cells.length], r.actions);
    return tr;
  });
  for (const tr of old.values()) tr.remove();
  rows.forEach((tr, i) => {
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
  });
}

function setCell(td, c) {
  const cls = c.cls || "";
  if (td.className !== cls) td.className = cls;
  if (c.nodes) {
    if (td.dataset.sig !== c.sig) {
      td.dataset.sig = c.sig;
      td.replaceChildren(...c.nodes());
    }
  } else if (td.textContent !== String(c.text)) {
    td.textContent = c.text;
  }
  if ((td.title || "") !== (c.title || "")) td.title = c.title || "";
}

function setActions(td, actions) {
  td.className = "actions";
  const sig = actions.map((a) => `${a.label} ${a.method} ${a.path}`).join("|");
  if (td.dataset.sig === sig) return;
  td.dataset.sig = sig;
  td.replaceChildren(...actions.flatMap((a, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "small";
    b.textContent = a.label;
    b.dataset.action = a.label.toLowerCase();
    b.addEventListener("click", () => act(b, a.method, a.path));
    return i ? [" ", b] : [b];
  }));
}

function drawQueues(queues) {
  sync($("#queues"), queues, (q) => ({
    key: q.name,
    data: {queue: q.name, paused: q.paused},
    cells: [
      {text: q.name, cls: "name"},
      {text: q.weights.length ? q.weights.join(" / ") : "—", cls: "weight"},
      {text: q.pending, cls: "num"}, {text: q.active, cls: "num"}, {text: q.scheduled, cls: "num"},
      {text: q.retry, cls: "num"}, {text: q.archived, cls: "num"}, {text: q.completed, cls: "num"},
      {text: fmtMs(q.latency_ms), cls: "num latency"},
      {text: q.paused ? "paused" : "running", cls: q.paused ? "state paused" : "state"},
    ],
    actions: admin ? [{label: q.paused ? "Unpause" : "Pause", method: "POST",
      path: `/api/admin/queues/${encodeURIComponent(q.name)}/${q.paused ? "unpause" : "pause"}`}] : null,
  }));
}

function drawWorkers(workers, now) {
  $("#worker-count").textContent = `(${workers.length})`;
  sync($("#workers"), workers, (w) => {
    const total = Object.values(w.queues || {}).reduce((a, b) => a + b, 0);
    const queues = Object.entries(w.queues || {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
      .map(([q, n]) => `${q} ${n}` + (total && !w.strict_priority ? ` (${Math.round(100 * n / total)}%)` : "")).join(" · ");
    const jobs = w.jobs || [];
    return {
      key: w.id,
      data: {worker: w.id},
      cells: [
        {text: w.host}, {text: w.pid, cls: "num"},
        {sig: `${w.busy}/${w.concurrency}`, nodes: () => {
          const meter = document.createElement("meter");
          meter.min = 0; meter.max = w.concurrency; meter.value = w.busy;
          return [meter, ` ${w.busy} / ${w.concurrency}`];
        }},
        {text: queues + (w.strict_priority ? " · strict" : "")},
        {text: ago(new Date(w.started), now)},
        {cls: "running", sig: jobs.map((j) => j.task).join(","), nodes: () => jobs.flatMap((j) => {
          const span = document.createElement("span");
          span.className = "job";
          span.textContent = `${j.type} ${short(j.job)}`;
          span.title = `job ${j.job} (task ${j.task}, queue ${j.queue}), started ${new Date(j.started).toLocaleTimeString()}`;
          return [span, " "];
        })},
      ],
    };
  });
}

function drawProcesses(procs, now) {
  sync($("#processes"), procs, (p) => {
    const sockets = Object.values(p.sockets || {}).reduce((a, b) => a + b, 0);
    const byTransport = Object.entries(p.sockets || {}).filter(([, n]) => n > 0).map(([t, n]) => `${t} ${n}`).join(", ");
    const fin = p.finished || {};
    return {
      key: p.id,
      data: {process: p.id},
      cells: [
        {text: p.role}, {text: `${p.host}:${p.pid}`}, {text: sockets, cls: "num", title: byTransport},
        {text: p.subscriptions, cls: "num"}, {text: p.groups, cls: "num"},
        {text: fmtRate(p.delivered_per_s), cls: "num"},
        {text: `${fin.completed || 0} ✓ ${fin.failed || 0} ✗ ${fin.canceled || 0} ⊘`, cls: "num",
          title: "completed ✓, failed ✗, canceled ⊘ since the process started"},
        {text: ago(new Date(p.started), now)},
      ],
    };
  });
}

function drawFailures(failures, now) {
  $("#no-failures").hidden = failures.length > 0;
  sync($("#failures"), failures, (f) => {
    const state = f.state === "retry"
      ? `retry ${f.retried}/${f.max_retry}` + (f.next_retry ? `, next in ${until(new Date(f.next_retry), now)}` : "")
      : `archived after ${f.retried} retries`;
    const base = `/api/admin/queues/${encodeURIComponent(f.queue)}/tasks/${encodeURIComponent(f.task)}`;
    const actions = [{label: "Retry", method: "POST", path: base + "/retry"}];
    if (f.state !== "archived") actions.push({label: "Archive", method: "POST", path: base + "/archive"});
    actions.push({label: "Delete", method: "DELETE", path: base});
    return {
      key: `${f.queue}/${f.task}`,
      data: {task: f.task, state: f.state},
      cells: [
        {text: ago(new Date(f.failed_at), now)}, {text: short(f.job), cls: "job-id", title: `job ${f.job}, task ${f.task}`},
        {text: f.type}, {text: f.queue}, {text: state}, {text: f.error, cls: "error"},
      ],
      actions: admin ? actions : null,
    };
  });
}

async function act(btn, method, path) {
  btn.disabled = true;
  const r = await api(method, path);
  btn.disabled = false;
  const el = $("#action-error");
  if (r.ok) {
    el.hidden = true;
  } else {
    showError(el, r.error.message);
  }
}

function showError(el, message) {
  el.textContent = message;
  el.hidden = false;
}

// ---- charts (inline SVG) ---------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
const W = 360, H = 140, PAD_L = 34, PAD_B = 16, PAD_T = 8;
let stepMs = 1000; // the charts' resolution, from the latest snapshot

function svgEl(name, attrs) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

function drawCharts(s) {
  const series = s.series || {};
  const n = (series.completed || []).length;
  stepMs = series.step_ms || 1000;
  $("#window").textContent = fmtWindow(n * stepMs);
  chart("#chart-jobs", [
    {name: "completed", values: series.completed || [], cls: "s-ok"},
    {name: "failed", values: series.failed || [], cls: "s-bad"},
    {name: "canceled", values: series.canceled || [], cls: "s-warn"},
  ], "#legend-jobs", (v) => fmtRate(v));
  chart("#chart-events", [{name: "delivered", values: series.delivered || [], cls: "s-accent"}], null, (v) => fmtRate(v));
  $("#now-events").textContent = `now ${fmtRate((s.rates || {}).delivered || 0)}/s`;
  const socks = Object.entries(series.sockets || {}).sort((a, b) => a[0].localeCompare(b[0]))
    .map(([label, values], i) => ({name: label, values, cls: "s" + (i % 6)}));
  chart("#chart-sockets", socks, "#legend-sockets", (v) => fmtRate(v));
}

function chart(sel, lines, legendSel, fmt) {
  const fig = $(sel);
  const n = Math.max(1, ...lines.map((l) => l.values.length));
  let top = 0;
  for (const l of lines) for (const v of l.values) if (v != null && v > top) top = v;
  top = niceTop(top);
  const x = (i) => PAD_L + (W - PAD_L - 4) * (n === 1 ? 1 : i / (n - 1));
  const y = (v) => PAD_T + (H - PAD_T - PAD_B) * (1 - v / top);
  const svg = svgEl("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", class: "plot-svg"});
  svg.append(svgEl("title", {}));
  svg.firstChild.textContent = lines.map((l) => `${l.name}: ${fmt(last(l.values))}`).join(", ") || "no data";
  for (const frac of [0, 0.5, 1]) {
    const yy = y(top * frac);
    svg.append(svgEl("line", {x1: PAD_L, x2: W - 4, y1: yy, y2: yy, class: "grid"}));
    const t = svgEl("text", {x: PAD_L - 6, y: yy + 4, class: "tick", "text-anchor": "end"});
    t.textContent = fmt(top * frac);
    svg.append(t);
  }
  const left = svgEl("text", {x: PAD_L, y: H - 3, class: "tick"});
  left.textContent = "-" + fmtWindow(n * stepMs);
  const right = svgEl("text", {x: W - 4, y: H - 3, class: "tick", "text-anchor": "end"});
  right.textContent = "now";
  svg.append(left, right);
  for (const l of lines) {
    let d = "";
    let pen = false;
    l.values.forEach((v, i) => {
      if (v == null) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    if (d) svg.append(svgEl("path", {d, class: "line " + l.cls, "data-name": l.name}));
  }
  fig.querySelector(".plot").replaceChildren(svg);
  if (legendSel) {
    $(legendSel).replaceChildren(...lines.map((l) => {
      const span = document.createElement("span");
      span.className = "key " + l.cls;
      span.textContent = `${l.name} ${fmt(last(l.values))}`;
      return span;
    }));
  }
}

function last(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] != null) return values[i];
  return 0;
}

function niceTop(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// ---- formatting ------------------------------------------------------------------

function fmtMs(ms) {
  if (!ms) return "0";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
  return `${Math.round(ms / 60000)} min`;
}

function fmtWindow(ms) {
  const unit = (n, one) => `${n} ${one}${n === 1 ? "" : "s"}`;
  if (ms >= 3600000) return unit(Math.round(ms / 3600000), "hour");
  if (ms >= 60000) return unit(Math.round(ms / 60000), "minute");
  return unit(Math.round(ms / 1000), "second");
}

function fmtRate(v) {
  if (!v) return "0";
  if (v >= 100) return String(Math.round(v));
  return String(Math.round(v * 10) / 10);
}

function ago(t, now) {
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

function until(t, now) {
  const s = Math.max(0, Math.round((t - now) / 1000));
  return s < 60 ? `${s}s` : s < 3600 ? `${Math.floor(s / 60)}m` : `${Math.floor(s / 3600)}h`;
}

function short(id) { return id.length > 10 ? id.slice(0, 8) + "…" : id; }
