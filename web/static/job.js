// The job page, /jobs/ID: one job's summary, result, progress chart,
// attempts, whole event timeline and log, kept live by the shared client
// (taskstream.js). Every string that comes from the server is rendered with
// textContent, never as HTML.
import {TaskStream} from "./taskstream.js";
import {
  api, avoidToasts, fmtBytes, fmtDuration, fmtNum, me, parseTime, setTime, showConnection, timeEl,
  watchNotifications, watchOnline,
} from "./common.js";

const $ = (sel) => document.querySelector(sel);
const TERMINAL = new Set(["completed", "failed", "canceled"]);

const ts = new TaskStream({url: location.origin});
window.__ts = ts; // for tests and the curious

showConnection(ts, $("#conn"));
watchNotifications(ts);
avoidToasts(() => [$("header.top"), $(".summary .job-head"), $("#bar")]);

const announcer = $("#announcer");
function announce(text) {
  announcer.textContent = "";
  setTimeout(() => { announcer.textContent = text; }, 50);
}

// jobID is the id in the address, "" when it names none.
function jobID() {
  const m = /^\/jobs\/([^/]+)\/?$/.exec(location.pathname);
  if (!m) return "";
  try { return decodeURIComponent(m[1]); } catch { return ""; }
}

const id = jobID();
const job = {
  type: "", state: "", attempt: 0, epoch: "", seq: 0, // seq: the newest event the summary shows
  created: NaN, started: NaN, finished: NaN,
  progress: null, lastUpdate: Date.now(), canceling: false,
};
let online = true;
let offlineSince = 0;

// ---- problems: an unknown id, someone else's job ------------------------------

function showProblem(title, text) {
  $("#loading").hidden = true;
  $("#job").hidden = true;
  $("#problem-title").textContent = title;
  $("#problem-text").textContent = text;
  $("#problem").hidden = false;
  document.title = `${title} · taskstream`;
}

async function showWho() {
  try {
    const user = await me();
    $("#who").textContent = user.guest ? `${user.name} (guest)` : user.email || user.name;
  } catch {
    $("#who").textContent = "not connected";
  }
}

// ---- the summary ----------------------------------------------------------------

function renderSnapshot(j) {
  job.type = j.type;
  job.lastUpdate = Date.now();
  $("#job-type").textContent = j.type;
  $("#job-id").textContent = j.id;
  document.title = `${j.type} job ${j.id.slice(0, 8)} · taskstream`;
  job.created = parseTime(j.created_at);
  if (Number.isFinite(parseTime(j.started_at))) job.started = parseTime(j.started_at);
  if (Number.isFinite(parseTime(j.finished_at))) job.finished = parseTime(j.finished_at);
  // A snapshot older than the events shown must not move the state back.
  const stale = j.epoch === job.epoch && typeof j.last_seq === "number" && j.last_seq < job.seq;
  if (!stale) {
    setState(j.state);
    setAttempt(j.attempt);
    if (j.progress) setProgress(j.progress);
    job.seq = Math.max(job.seq, j.last_seq || 0);
    job.epoch = j.epoch || job.epoch;
  }
  if (job.state === "completed") {
    setPercent(100);
    setError("");
  } else if (j.error && (TERMINAL.has(job.state) || job.state === "retry")) {
    setError(j.error);
  }
  const params = $("#params");
  params.replaceChildren(j.params && typeof j.params === "object" && Object.keys(j.params).length
    ? renderValue(j.params) : text("none", "muted"));
  if (j.result !== null && j.result !== undefined) setResult(j.result);
  if (typeof j.artifact === "string") setArtifact(j.artifact, j.artifact_size);
  renderTimes();
  renderLive();
}

function setState(state) {
  if (typeof state !== "string" || !state || job.state === state) return;
  const before = job.state;
  job.state = state;
  document.body.dataset.state = state;
  $("#job-state").textContent = state;
  $("#cancel").hidden = TERMINAL.has(state);
  if (before) announce(`The job is ${state}.`);
}

function setAttempt(n) {
  if (!n) return;
  job.attempt = n;
  $("#job-attempt").textContent = `attempt ${n}`;
}

function setPercent(pct) {
  const p = Math.max(0, Math.min(100, Number(pct) || 0));
  const shown = Math.floor(p);
  const bar = $("#bar");
  bar.setAttribute("aria-valuenow", String(shown));
  bar.setAttribute("aria-valuetext", `${shown}%`);
  $("#fill").style.width = p + "%";
  $("#percent").textContent = shown + "%";
}

function setProgress(p) {
  job.progress = p;
  if (typeof p.percent === "number" && job.state !== "completed") setPercent(p.percent);
  const count = typeof p.done === "number" && typeof p.total === "number" && p.total > 0
    ? `${fmtNum(p.done)} / ${fmtNum(p.total)}` : "";
  $("#stage").textContent = p.stage || "";
  $("#message").textContent = (typeof p.message === "string" && p.message) || count;
  // Rate and ETA only while the job runs and the page hears about it.
  const live = !TERMINAL.has(job.state) && online;
  $("#rate").textContent = live && p.rate > 0 ? `${fmtNum(p.rate)}/s` : "";
  $("#eta").textContent = live && p.eta_s > 0 ? `ETA ${fmtDuration(p.eta_s)}` : "";
}

function setError(msg) {
  $("#error").textContent = msg;
  $("#error").hidden = !msg;
}

function setResult(result) {
  $("#result").replaceChildren(renderValue(result));
  $("#result-raw").textContent = JSON.stringify(result, null, 2);
  $("#result-panel").hidden = false;
}

function setArtifact(href, size) {
  let url;
  try { url = new URL(href, location.origin); } catch { return; }
  if (url.origin !== location.origin) return; // never a foreign or javascript: link
  const a = $("#artifact");
  a.href = url.pathname + url.search;
  a.textContent = typeof size === "number" ? `Download the CSV (${fmtBytes(size)})` : "Download the CSV";
  a.hidden = false;
  $("#result-panel").hidden = false;
}

function renderTimes() {
  setTime($("#created-at"), job.created, "unknown");
  const done = TERMINAL.has(job.state);
  setTime($("#started-at"), job.started, done ? "never" : "not yet");
  setTime($("#finished-at"), done ? job.finished : NaN, done ? "unknown" : "not yet");
  const now = Date.now();
  const waitEnd = Number.isFinite(job.started) ? job.started : done ? job.finished : now;
  $("#queue-wait").textContent = Number.isFinite(job.created) && Number.isFinite(waitEnd)
    ? fmtDuration(Math.max(0, waitEnd - job.created) / 1000) + (Number.isFinite(job.started) || done ? "" : " so far") : "";
  let d = "";
  if (Number.isFinite(job.started)) {
    const end = done ? job.finished : now;
    if (Number.isFinite(end)) d = fmtDuration(Math.max(0, end - job.started) / 1000) + (done ? "" : " so far");
  } else if (done) {
    d = "never ran";
  }
  $("#duration").textContent = d;
}

// renderLive says what the page knows while the connection is lost: when
// it last heard of the job; no ETA; no Cancel (it could not be sent).
function renderLive() {
  const done = TERMINAL.has(job.state);
  const lost = !online && offlineSince > 0 && !done;
  const stale = $("#stale");
  stale.hidden = !lost;
  if (lost) {
    stale.textContent = `Connection lost, last update ${fmtDuration(Math.floor(Math.max(0, Date.now() - job.lastUpdate) / 1000))} ago. Cancel works again once it is back.`;
  }
  const cancel = $("#cancel");
  cancel.disabled = done || lost || job.canceling;
  cancel.title = lost ? "Offline: the cancel could not be sent; it works again once the connection is back" : "";
  if (job.progress) setProgress(job.progress);
}

watchOnline(ts, (on, since) => {
  online = on;
  offlineSince = since;
  renderLive();
});

setInterval(() => {
  if (TERMINAL.has(job.state)) return;
  renderTimes();
  if (!online) renderLive();
  drawChart();
}, 1000);

$("#cancel").addEventListener("click", async () => {
  job.canceling = true;
  renderLive();
  const r = await api("POST", `/api/jobs/${encodeURIComponent(id)}/cancel`);
  if (r.ok) {
    renderSnapshot(r.data);
    if (!TERMINAL.has(job.state)) $("#cancel").textContent = "Canceling…";
    return;
  }
  job.canceling = false;
  renderLive();
  if (r.status === 409) refresh();
  else setError(r.error.message);
});

$("#copy-id").addEventListener("click", async () => {
  const button = $("#copy-id");
  try {
    await navigator.clipboard.writeText(id);
    button.textContent = "Copied";
  } catch {
    getSelection().selectAllChildren($("#job-id"));
    button.textContent = "Selected: copy it";
  }
  setTimeout(() => { button.textContent = "Copy id"; }, 2500);
});

async function refresh() {
  const r = await api("GET", "/api/jobs/" + encodeURIComponent(id));
  if (r.ok) renderSnapshot(r.data);
}

// ---- results, rendered for people -----------------------------------------------

const exactNumber = new Intl.NumberFormat(undefined, {maximumFractionDigits: 6});
const MAX_ROWS = 200; // rows of a records table shown; the raw JSON has all

function text(s, cls = "") {
  const span = document.createElement("span");
  if (cls) span.className = cls;
  span.textContent = s;
  return span;
}

function isRecord(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function scalar(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return exactNumber.format(v);
  if (typeof v === "boolean") return v ? "yes" : "no";
  return String(v);
}

// renderValue shows a JSON value readably: objects as key/value tables,
// arrays of records as tables, numbers formatted for the reader's locale.
function renderValue(v, depth = 0) {
  if (v === null || v === undefined || typeof v !== "object") {
    return text(scalar(v), typeof v === "number" ? "num" : v === null ? "muted" : "");
  }
  if (depth > 6) return text(JSON.stringify(v), "raw-inline");
  if (Array.isArray(v)) {
    if (v.length === 0) return text("none", "muted");
    if (v.every(isRecord)) return recordsTable(v, depth);
    if (v.every((x) => x === null || typeof x !== "object")) return text(v.map(scalar).join(", "));
    const ol = document.createElement("ol");
    ol.className = "values";
    for (const x of v.slice(0, MAX_ROWS)) {
      const li = document.createElement("li");
      li.append(renderValue(x, depth + 1));
      ol.append(li);
    }
    return ol;
  }
  // An object of records (totals by region) reads best as one table,
  // a row per key.
  const values = Object.values(v);
  if (values.length > 1 && values.every(isRecord)) return recordsTable(values, depth, Object.keys(v));
  const table = document.createElement("table");
  table.className = "kv";
  const body = table.createTBody();
  for (const [k, x] of Object.entries(v)) {
    const tr = body.insertRow();
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = k;
    const td = tr.insertCell();
    if (typeof x === "number") td.className = "num";
    td.append(renderValue(x, depth + 1));
    tr.prepend(th);
  }
  return wrap(table);
}

// recordsTable shows records as rows of a table, a column per key; labels,
// when given, head each row (the keys of an object of records).
function recordsTable(records, depth, labels) {
  const cols = [];
  for (const r of records) for (const k of Object.keys(r)) if (!cols.includes(k)) cols.push(k);
  const table = document.createElement("table");
  table.className = "records";
  const head = table.createTHead().insertRow();
  if (labels) head.append(document.createElement("td"));
  for (const c of cols) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = c;
    head.append(th);
  }
  const body = table.createTBody();
  records.slice(0, MAX_ROWS).forEach((r, i) => {
    const tr = body.insertRow();
    if (labels) {
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = labels[i];
      tr.append(th);
    }
    for (const c of cols) {
      const td = tr.insertCell();
      if (typeof r[c] === "number") td.className = "num";
      td.append(r[c] === undefined ? text("") : renderValue(r[c], depth + 1));
    }
  });
  const out = wrap(table);
  if (records.length > MAX_ROWS) out.append(text(`… and ${fmtNum(records.length - MAX_ROWS)} more rows (see the raw JSON).`, "muted"));
  return out;
}

function wrap(table) {
  const div = document.createElement("div");
  div.className = "table-wrap";
  div.append(table);
  return div;
}

// ---- the history: timeline, attempts, log, chart ----------------------------------

const timeline = $("#timeline");
const attempts = new Map(); // n → {n, start, end, outcome, error}
let current = 0; // the attempt running or last run
let progressEntry = null; // the timeline's last entry when it groups progress events
let points = []; // [time ms, percent] of the progress events
let firstSeq = 0; // the first event the log still had

function resetHistory() {
  timeline.replaceChildren();
  $("#log").replaceChildren();
  $("#no-log").hidden = false;
  attempts.clear();
  current = 0;
  progressEntry = null;
  points = [];
  firstSeq = 0;
  renderAttempts();
  drawChart();
}

function historyNote(msg) {
  const note = $("#history-note");
  note.textContent = msg;
  note.hidden = !msg;
}

function entry(f, kind, label) {
  const li = document.createElement("li");
  li.className = "tl-" + kind;
  li.dataset.seq = String(f.seq);
  li.dataset.event = f.event;
  const t = parseTime(f.ts);
  const when = document.createElement("span");
  when.className = "tl-when";
  when.append(timeEl(t));
  if (Number.isFinite(job.created) && Number.isFinite(t)) {
    when.append(text(` +${fmtDuration(Math.max(0, t - job.created) / 1000)}`, "tl-offset"));
  }
  const what = document.createElement("span");
  what.className = "tl-what";
  what.append(text(kind, "tl-kind"), text(label, "tl-label"));
  li.append(when, what);
  timeline.append(li);
  return li;
}

function attempt(n, t) {
  if (!attempts.has(n)) attempts.set(n, {n, start: t, end: NaN, outcome: "running", error: ""});
  return attempts.get(n);
}

function endAttempt(t, outcome, error = "") {
  if (!current) return;
  const a = attempt(current, NaN);
  if (a.outcome !== "running") return;
  a.end = t;
  a.outcome = outcome;
  a.error = error;
}

// record adds one event to the history views.
function record(f) {
  const d = f.data || {};
  const t = parseTime(f.ts);
  if (!firstSeq) {
    firstSeq = f.seq;
    if (f.seq > 1 && $("#history-note").hidden) historyNote(`The oldest ${fmtNum(f.seq - 1)} events of this job are no longer kept; the timeline starts later.`);
  }
  if (f.event !== "progress") progressEntry = null;
  switch (f.event) {
    case "state": {
      let label = d.state;
      if (d.state === "pending") label = d.attempt ? `back in the queue after attempt ${d.attempt}` : "submitted, waiting in the queue";
      if (d.state === "scheduled") label = d.run_at ? `scheduled for ${new Date(d.run_at).toLocaleString()}` : "scheduled";
      if (d.state === "active") label = `attempt ${d.attempt || "?"} started`;
      if (d.state === "retry") label = `attempt ${d.attempt || "?"} failed; it will be retried`;
      if (d.state === "completed") label = "completed";
      if (d.state === "failed") label = "failed";
      if (d.state === "canceled") label = "canceled";
      if (typeof d.message === "string" && d.message) label += ` (${d.message})`;
      const li = entry(f, "state", label);
      li.dataset.state = d.state;
      if (typeof d.error === "string" && d.error) li.append(text(d.error, "tl-error"));
      if (d.state === "active") {
        if (d.attempt) current = d.attempt;
        attempt(current, t);
      } else if (d.state === "retry") {
        if (d.attempt) current = d.attempt;
        endAttempt(t, "failed, retried", d.error || "");
      } else if (d.state === "pending" && d.attempt) {
        endAttempt(t, "handed back to the queue");
      } else if (TERMINAL.has(d.state)) {
        endAttempt(t, d.state, d.error || "");
      }
      renderAttempts();
      break;
    }
    case "progress": {
      if (typeof d.percent === "number" && Number.isFinite(t)) points.push([t, Math.max(0, Math.min(100, d.percent))]);
      const pct = typeof d.percent === "number" ? `${Math.floor(d.percent)}%` : "";
      const detail = [d.stage, d.message].filter((x) => typeof x === "string" && x).join(": ");
      if (!progressEntry) {
        progressEntry = entry(f, "progress", "");
        progressEntry.dataset.count = "0";
        progressEntry.dataset.from = pct;
      }
      const n = Number(progressEntry.dataset.count) + 1;
      progressEntry.dataset.count = String(n);
      const from = progressEntry.dataset.from;
      const span = n > 1 && from !== pct ? `${from} → ${pct}` : pct;
      progressEntry.querySelector(".tl-label").textContent =
        `${span}${detail ? " · " + detail : ""}${n > 1 ? ` (${fmtNum(n)} updates)` : ""}`;
      drawChart();
      break;
    }
    case "log": {
      const level = typeof d.level === "string" ? d.level : "info";
      const msg = typeof d.message === "string" ? d.message : JSON.stringify(d);
      entry(f, "log", `${level}: ${msg}`);
      const li = document.createElement("li");
      li.dataset.level = level;
      li.append(timeEl(t), text(level, "log-level"), text(msg, "log-message"));
      $("#log").append(li);
      $("#no-log").hidden = true;
      break;
    }
    case "result":
      entry(f, "result", "result recorded");
      break;
    case "failed":
      entry(f, "failed", typeof d.error === "string" ? d.error : "failed").classList.add("bad");
      break;
    default:
      entry(f, f.event, JSON.stringify(d));
  }
}

function renderAttempts() {
  const body = $("#attempts");
  body.replaceChildren();
  for (const a of [...attempts.values()].sort((x, y) => x.n - y.n)) {
    const tr = body.insertRow();
    tr.dataset.attempt = String(a.n);
    tr.dataset.outcome = a.outcome;
    tr.insertCell().textContent = String(a.n);
    tr.insertCell().append(timeEl(a.start, "unknown"));
    const took = Number.isFinite(a.start) ? (Number.isFinite(a.end) ? a.end : a.outcome === "running" ? Date.now() : NaN) : NaN;
    tr.insertCell().textContent = Number.isFinite(took) ? fmtDuration(Math.max(0, took - a.start) / 1000) : "";
    const out = tr.insertCell();
    out.append(text(a.outcome, "outcome"));
    if (a.error) out.append(text(a.error, "error"));
  }
  $("#no-attempts").hidden = attempts.size > 0;
}

let drawing = 0;
function drawChart() {
  if (!drawing) drawing = requestAnimationFrame(() => { drawing = 0; draw(); });
}

// draw plots percent against time, 0-1000 by 0-100 in the SVG's own units
// (the SVG stretches to its box; the labels are HTML).
function draw() {
  const line = $("#chart-line");
  if (points.length === 0) {
    line.setAttribute("points", "");
    $("#chart-caption").textContent = "No progress reported yet.";
    $("#chart-from").textContent = $("#chart-to").textContent = "";
    return;
  }
  const t0 = Number.isFinite(job.started) && job.started <= points[0][0] ? job.started : points[0][0];
  const end = TERMINAL.has(job.state) ? points[points.length - 1][0] : Math.max(Date.now(), points[points.length - 1][0]);
  const span = Math.max(1, end - t0);
  const step = Math.max(1, Math.ceil(points.length / 1000));
  const shown = points.filter((_, i) => i % step === 0 || i === points.length - 1);
  const xy = shown.map(([t, p]) => `${((t - t0) / span * 1000).toFixed(1)},${(100 - p).toFixed(2)}`);
  if (!TERMINAL.has(job.state)) xy.push(`1000,${(100 - points[points.length - 1][1]).toFixed(2)}`); // holding since
  line.setAttribute("points", xy.join(" "));
  $("#chart-from").textContent = new Date(t0).toLocaleTimeString();
  $("#chart-to").textContent = `+${fmtDuration(span / 1000)}`;
  const last = points[points.length - 1][1];
  $("#chart-caption").textContent =
    `${Math.floor(points[0][1])}% to ${Math.floor(last)}% over ${fmtDuration(span / 1000)}, ${fmtNum(points.length)} progress updates.`;
}

// ---- live ------------------------------------------------------------------------

function onEvent(f) {
  record(f);
  job.lastUpdate = Date.now();
  // The summary moves only with events newer than what it shows.
  if (f.seq <= job.seq && f.epoch === job.epoch) return;
  job.seq = f.seq;
  job.epoch = f.epoch || job.epoch;
  const d = f.data || {};
  const t = parseTime(f.ts);
  switch (f.event) {
    case "state":
      setState(d.state);
      setAttempt(d.attempt);
      if (d.state === "active" && !Number.isFinite(job.started)) job.started = t;
      if (TERMINAL.has(d.state)) job.finished = t;
      if (d.state === "retry" && d.error) setError(`Attempt ${d.attempt || "?"} failed: ${d.error}`);
      else if (d.state === "active" || d.state === "completed") setError("");
      if (d.state === "completed") setPercent(100);
      break;
    case "progress":
      setProgress(d);
      break;
    case "result":
      setResult(d.result);
      break;
    case "failed":
      setError(typeof d.error === "string" ? d.error : "failed");
      break;
    default:
  }
  renderTimes();
  renderLive();
}

async function main() {
  showWho();
  if (!id) {
    showProblem("No such job", "This address does not name a job.");
    return;
  }
  const r = await api("GET", "/api/jobs/" + encodeURIComponent(id));
  if (!r.ok) {
    if (r.status === 404) {
      showProblem("No such job", `There is no job ${id}: the id is wrong, or the job is older than the server keeps jobs.`);
    } else if (r.status === 403) {
      showProblem("Not your job", `Job ${id} belongs to someone else. Sign in as its owner to see it.`);
    } else {
      showProblem("The job could not be loaded", `${r.error.message} Reload the page to try again.`);
    }
    return;
  }
  $("#loading").hidden = true;
  $("#job").hidden = false;
  renderSnapshot(r.data);
  // No position: the whole retained history, then live events.
  ts.subscribe("job:" + id, {
    onEvent,
    onSubscribed(info) {
      // An empty log for a job that exists: its events expired (they are
      // kept for a while after the job), the record outlived them.
      if (info.last_seq === 0 && !firstSeq && $("#history-note").hidden) {
        historyNote("This job's events are no longer kept; the state above is from its record.");
      }
    },
    onReset(info) {
      // The server lost what this page had seen (or the log was replaced):
      // say so, reload the job, and rebuild from what is left.
      resetHistory();
      job.seq = 0;
      job.epoch = info.epoch || "";
      historyNote(`History lost: the server no longer has this job's earlier events (${info.reason}). ` +
        "The state above is reloaded; the timeline shows only the events it still has.");
      refresh();
    },
    onEnd: () => refresh(),
    onError(err) {
      if (!TERMINAL.has(job.state)) setError(`Live updates stopped: ${err.message}`);
    },
  });
}

main();
