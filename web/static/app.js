// The taskstream page: a job form generated from the job types' JSON
// Schemas, and a live list of jobs. Every string that comes from the server
// is rendered with textContent, never as HTML.
import {TaskStream} from "./taskstream.js";
import {
  api, avoidToasts, fmtBytes, fmtDuration, fmtNum, me, parseTime, safeLink, setTime, showConnection, watchNotifications,
  watchOnline,
} from "./common.js";

const $ = (sel, root = document) => root.querySelector(sel);
const TERMINAL = new Set(["completed", "failed", "canceled"]);

const ts = new TaskStream({url: location.origin});
window.__ts = ts; // for tests and the curious: ts.delivered("job:ID"), ts.dropConnection()

// ---- connection indicator and notifications -------------------------------

showConnection(ts, $("#conn"));
watchNotifications(ts, {shown: showOnRow, onEvent: onUserEvent});
// Toasts never cover the header, the Run job button or the newest job,
// nor the rest of the form unless it leaves no room (a phone).
avoidToasts(() => [$("header.top"), $("#submit"), $("#jobs > li")], () => [$("#job-form")]);

// showOnRow flashes the row of a notification's job ("/#job-ID") when the
// row is on screen, instead of a toast repeating it; it says whether it did.
function showOnRow(n) {
  const href = safeLink(n && n.link);
  const m = /^\/#job-(.+)$/.exec(href);
  if (!m) return false;
  let id;
  try { id = decodeURIComponent(m[1]); } catch { return false; }
  const row = rows.get(id);
  if (!row) return false;
  const r = row.el.getBoundingClientRect();
  const visible = Math.min(r.bottom, document.documentElement.clientHeight) - Math.max(r.top, 0);
  if (visible < Math.min(r.height, 48)) return false;
  row.el.classList.remove("notified");
  void row.el.offsetWidth; // restart the animation
  row.el.classList.add("notified");
  return true;
}

// ---- announcements ----------------------------------------------------------

const announcer = $("#announcer");
function announce(text) {
  // Replace the text so screen readers read each change once.
  announcer.textContent = "";
  setTimeout(() => { announcer.textContent = text; }, 50);
}

// ---- who is signed in, sign-in and sign-out ----------------------------------

const who = $("#who");
const signInToggle = $("#sign-in-toggle");
const signOutButton = $("#sign-out");
const signInForm = $("#sign-in-form");
const emailStep = $("#email-step");
const codeStep = $("#code-step");
const emailInput = $("#sign-in-email");
const codeInput = $("#sign-in-code");
const codeSentTo = $("#code-sent-to");
const signInError = $("#sign-in-error");
const signOutError = $("#sign-out-error");

function showSignInError(text) {
  signInError.textContent = sentence(text);
  signInError.hidden = !text;
}

// sentence starts the server's message with a capital and ends it with a
// full stop, leaving its words as they are.
function sentence(text) {
  const t = String(text || "").trim();
  if (!t) return "";
  return t[0].toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? "" : ".");
}

function showStep(step) {
  emailStep.hidden = step !== "email";
  codeStep.hidden = step !== "code";
  showSignInError("");
  (step === "email" ? emailInput : codeInput).focus();
}

async function showWho() {
  let user;
  try {
    user = await me();
  } catch {
    who.textContent = "not connected";
    return;
  }
  who.textContent = user.guest ? `${user.name} (guest)` : user.email || user.name;
  who.title = user.guest ? "A guest session: sign in to keep your jobs on any device." : `Signed in as ${user.name}`;
  signInToggle.hidden = !user.guest;
  signOutButton.hidden = user.guest;
}

signInToggle.addEventListener("click", () => {
  const open = signInForm.hidden;
  signInForm.hidden = !open;
  signInToggle.setAttribute("aria-expanded", String(open));
  if (open) showStep("email");
});

$("#sign-in-cancel").addEventListener("click", () => {
  signInForm.hidden = true;
  signInToggle.setAttribute("aria-expanded", "false");
  signInToggle.focus();
});

$("#other-email").addEventListener("click", () => showStep("email"));

signInForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  showSignInError("");
  const busy = signInForm.querySelectorAll("button, input");
  const email = emailInput.value.trim();
  if (!codeStep.hidden) {
    const code = codeInput.value.trim();
    if (!code) {
      showSignInError("Enter the code from the mail.");
      return;
    }
    busy.forEach((el) => { el.disabled = true; });
    const r = await api("POST", "/api/auth/login", {email, code});
    busy.forEach((el) => { el.disabled = false; });
    if (!r.ok) {
      showSignInError(r.error.message);
      codeInput.focus();
      return;
    }
    // A new identity: the socket and the user group must follow it.
    location.reload();
    return;
  }
  if (!email) {
    showSignInError("Enter your email address.");
    return;
  }
  await requestCode(email);
});

// requestCode mails a code to email and moves to the code step; the code
// step's "Send a new code" calls it again after a code stopped working.
async function requestCode(email) {
  const busy = signInForm.querySelectorAll("button, input");
  busy.forEach((el) => { el.disabled = true; });
  const r = await api("POST", "/api/auth/code", {email});
  busy.forEach((el) => { el.disabled = false; });
  if (!r.ok) {
    showSignInError(r.error.message);
    (codeStep.hidden ? emailInput : codeInput).focus();
    return;
  }
  codeSentTo.textContent = email;
  codeInput.value = "";
  showStep("code");
}

$("#resend-code").addEventListener("click", () => {
  showSignInError("");
  requestCode(emailInput.value.trim());
});

signOutButton.addEventListener("click", async () => {
  signOutButton.disabled = true;
  const r = await api("POST", "/api/auth/logout");
  if (!r.ok) {
    signOutButton.disabled = false;
    signOutError.textContent = "Could not sign out: " + r.error.message;
    signOutError.hidden = false;
    return;
  }
  location.reload();
});

// ---- the form, generated from the JSON Schemas ----------------------------

const form = $("#job-form");
const typeSelect = $("#job-type");
const typeDesc = $("#job-type-desc");
const paramsBox = $("#job-params");
const submitButton = $("#submit");
const formError = $("#form-error");
let jobTypes = [];

function showFormError(text) {
  formError.textContent = text;
  formError.hidden = !text;
}

async function loadJobTypes() {
  const r = await api("GET", "/api/job-types");
  if (!r.ok || !Array.isArray(r.data)) {
    showFormError("Could not load the job types: " + (r.error ? r.error.message : "bad answer"));
    return;
  }
  jobTypes = r.data;
  typeSelect.replaceChildren(...jobTypes.map((t) => {
    const o = document.createElement("option");
    o.value = t.type;
    const title = t.params && typeof t.params.title === "string" ? t.params.title : "";
    o.textContent = !title || title.toLowerCase() === t.type.toLowerCase() ? title || t.type : `${title} (${t.type})`;
    return o;
  }));
  const first = initialType();
  if (first) typeSelect.value = first.type;
  typeFilter.replaceChildren(new Option("all", ""), ...jobTypes.map((t) => new Option(t.type, t.type)));
  typeFilter.value = filter.type;
  typeSelect.disabled = jobTypes.length === 0;
  submitButton.disabled = jobTypes.length === 0;
  renderParams();
}

// The form opens on a type that runs as it stands, so a first "Run job"
// starts a job instead of stopping at "Please fill out this field": the
// type last run from this browser, else the first whose required params
// all have defaults, else the first whose required params all have a
// default or an example (the form fills in the example), else the first.
const LAST_TYPE_KEY = "taskstream.jobType";

function initialType() {
  let last = "";
  try { last = localStorage.getItem(LAST_TYPE_KEY) || ""; } catch { /* storage disabled */ }
  const byName = jobTypes.find((t) => t.type === last);
  const requiredProps = (t) => {
    const schema = (t && t.params) || {};
    const props = schema.properties || {};
    return (schema.required || []).map((name) => props[name] || {});
  };
  const hasDefault = (p) => p.default !== undefined;
  const hasExample = (p) => Array.isArray(p.examples) && p.examples.length > 0;
  return byName ||
    jobTypes.find((t) => requiredProps(t).every(hasDefault)) ||
    jobTypes.find((t) => requiredProps(t).every((p) => hasDefault(p) || hasExample(p))) ||
    jobTypes[0];
}

function currentType() {
  return jobTypes.find((t) => t.type === typeSelect.value);
}

function renderParams() {
  const t = currentType();
  typeDesc.textContent = t ? t.description || "" : "";
  const schema = (t && t.params) || {};
  const props = schema.properties || {};
  const required = new Set(schema.required || []);
  const fields = Object.entries(props).map(([name, prop]) => paramField(name, prop || {}, required.has(name)));
  paramsBox.replaceChildren(paramsBox.querySelector("legend") || legend(), ...fields);
  paramsBox.hidden = fields.length === 0;
  showFormError("");
}

function legend() {
  const l = document.createElement("legend");
  l.textContent = "Parameters";
  return l;
}

function paramField(name, prop, isRequired) {
  const id = "param-" + name;
  const wrap = document.createElement("div");
  wrap.className = "field";
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = prop.title || name;
  if (isRequired) {
    const mark = document.createElement("span");
    mark.className = "req";
    mark.textContent = " (required)";
    label.append(mark);
  }
  let input;
  const type = Array.isArray(prop.type) ? prop.type.find((x) => x !== "null") : prop.type;
  if (Array.isArray(prop.enum)) {
    input = document.createElement("select");
    if (!isRequired) input.append(new Option("", ""));
    for (const v of prop.enum) input.append(new Option(String(v), JSON.stringify(v)));
    if (prop.default !== undefined) input.value = JSON.stringify(prop.default);
  } else if (type === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = prop.default === true;
    wrap.classList.add("check");
  } else if (type === "integer" || type === "number") {
    input = document.createElement("input");
    input.type = "number";
    input.inputMode = type === "integer" ? "numeric" : "decimal";
    input.step = type === "integer" ? "1" : "any";
    if (typeof prop.minimum === "number") input.min = String(prop.minimum);
    if (typeof prop.maximum === "number") input.max = String(prop.maximum);
    if (prop.default !== undefined) input.value = String(prop.default);
  } else if (type === "object" || type === "array") {
    input = document.createElement("textarea");
    input.rows = 3;
    input.placeholder = type === "array" ? "[ … ] (JSON)" : "{ … } (JSON)";
    if (prop.default !== undefined) input.value = JSON.stringify(prop.default);
  } else {
    input = document.createElement("input");
    input.type = "text";
    if (typeof prop.minLength === "number") input.minLength = prop.minLength;
    if (typeof prop.maxLength === "number") input.maxLength = prop.maxLength;
    if (typeof prop.pattern === "string") input.pattern = prop.pattern;
    if (prop.default !== undefined) input.value = String(prop.default);
  }
  // A required field without a default starts with the schema's first
  // example, so the form is ready to run; an optional one only shows it.
  if (prop.default === undefined && Array.isArray(prop.examples) && prop.examples.length > 0 && input.type !== "checkbox") {
    const example = typeof prop.examples[0] === "string" ? prop.examples[0] : JSON.stringify(prop.examples[0]);
    if (!Array.isArray(prop.enum)) {
      if (isRequired) input.value = example;
      else input.placeholder = "e.g. " + example;
    } else if (isRequired) {
      input.value = JSON.stringify(prop.examples[0]);
    }
  }
  input.id = id;
  input.name = name;
  input.dataset.param = name;
  input.dataset.kind = Array.isArray(prop.enum) ? "enum" : type || "string";
  if (isRequired && type !== "boolean") input.required = true;
  wrap.append(label, input);
  if (prop.description) {
    const help = document.createElement("p");
    help.className = "help";
    help.id = id + "-help";
    help.textContent = prop.description;
    input.setAttribute("aria-describedby", help.id);
    wrap.append(help);
  }
  return wrap;
}

// readParams turns the inputs into the params object, or throws an Error
// with a message for the user.
function readParams() {
  const params = {};
  for (const input of paramsBox.querySelectorAll("[data-param]")) {
    const name = input.dataset.param;
    const kind = input.dataset.kind;
    if (kind === "boolean") {
      params[name] = input.checked;
      continue;
    }
    const raw = input.value.trim();
    if (raw === "") continue; // optional and empty: leave it out
    const label = input.labels && input.labels[0] ? input.labels[0].firstChild.textContent : name;
    if (kind === "integer" || kind === "number") {
      const n = Number(raw);
      if (!Number.isFinite(n) || (kind === "integer" && !Number.isInteger(n))) {
        throw new Error(`${label}: enter ${kind === "integer" ? "a whole number" : "a number"}.`);
      }
      params[name] = n;
    } else if (kind === "enum") {
      params[name] = JSON.parse(raw);
    } else if (kind === "object" || kind === "array") {
      try { params[name] = JSON.parse(raw); } catch { throw new Error(`${label}: enter valid JSON.`); }
    } else {
      params[name] = input.value;
    }
  }
  return params;
}

typeSelect.addEventListener("change", renderParams);

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  showFormError("");
  if (!form.reportValidity()) return;
  let params;
  try {
    params = readParams();
  } catch (err) {
    showFormError(err.message);
    return;
  }
  submitButton.disabled = true;
  const r = await api("POST", "/api/jobs", {type: typeSelect.value, params});
  submitButton.disabled = false;
  if (!r.ok) {
    showFormError(r.error.message);
    return;
  }
  const job = r.data;
  try { localStorage.setItem(LAST_TYPE_KEY, job.type); } catch { /* storage disabled */ }
  if (!matches(job)) {
    // The list shows other jobs: show all again, so the new one is seen.
    stateFilter.value = typeFilter.value = "";
    await applyFilter();
  }
  const row = addJob(job, {prepend: true, fresh: true});
  announce(`Job ${job.id} (${job.type}) submitted.`);
  showNewRow(row);
});

// showNewRow brings a row the user just made into view (on a phone it is
// below the form) and flashes it.
function showNewRow(row) {
  const r = row.el.getBoundingClientRect();
  const vh = document.documentElement.clientHeight;
  if (r.top < 0 || r.top > vh - Math.min(r.height, vh / 2)) {
    row.el.scrollIntoView({block: r.height > vh ? "start" : "center", behavior: reducedMotion() ? "auto" : "smooth"});
  }
  row.el.classList.remove("notified");
  void row.el.offsetWidth; // restart the animation
  row.el.classList.add("notified");
}

function reducedMotion() {
  return matchMedia("(prefers-reduced-motion: reduce)").matches;
}

// The form can be folded away (on a phone it fills the screen).
const formToggle = $("#form-toggle");
formToggle.addEventListener("click", () => {
  const open = form.hidden;
  form.hidden = !open;
  formToggle.setAttribute("aria-expanded", String(open));
  formToggle.textContent = open ? "Hide form" : "Show form";
});

// ---- the job list -----------------------------------------------------------

const list = $("#jobs");
const noJobs = $("#no-jobs");
const listError = $("#list-error");
const loadMoreButton = $("#load-more");
const stateFilter = $("#filter-state");
const typeFilter = $("#filter-type");
const template = $("#job-template");
const rows = new Map(); // id → row
const PAGE = 20; // jobs per page of the list
const filter = {state: "", type: ""};
let next = ""; // the cursor of the list's next page, "" at the end
let listGen = 0; // a newer load of the list wins over an older one
let online = true; // the live connection, as watchOnline tells
let offlineSince = 0;

function matches(job) {
  return (!filter.state || job.state === filter.state) && (!filter.type || job.type === filter.type);
}

function addJob(job, {prepend = false, fresh = false} = {}) {
  if (rows.has(job.id)) return rows.get(job.id);
  const el = template.content.firstElementChild.cloneNode(true);
  const f = (name) => el.querySelector(`[data-field="${name}"]`);
  const row = {
    id: job.id, el, type: job.type, state: "", epoch: job.epoch || "", seq: 0,
    created: parseTime(job.created_at), started: parseTime(job.started_at), finished: parseTime(job.finished_at),
    lastUpdate: Date.now(), progress: null, canceling: false,
    fields: {
      type: f("type"), id: f("id"), state: f("state"), attempt: f("attempt"), params: f("params"),
      created: f("created"), started: f("started"), startedWrap: f("started-wrap"), finished: f("finished"),
      finishedWrap: f("finished-wrap"), duration: f("duration"), stale: f("stale"),
      percent: f("percent"), stage: f("stage"), message: f("message"), rate: f("rate"), eta: f("eta"),
      log: f("log"), error: f("error"), resultBox: f("result-box"), result: f("result"), resultLink: f("result-link"),
      artifact: f("artifact"),
    },
    bar: el.querySelector("[role=progressbar]"),
    fill: el.querySelector(".fill"),
    cancel: el.querySelector("[data-action=cancel]"),
    copy: el.querySelector("[data-action=copy]"),
  };
  el.dataset.jobId = job.id;
  el.id = "job-" + job.id; // the anchor notifications link to
  row.fields.type.textContent = job.type;
  row.fields.type.href = "/jobs/" + encodeURIComponent(job.id);
  row.fields.type.title = "Open the job's page";
  // The whole id is the element's text (a copy or a select-all takes it);
  // the style shows its first characters.
  row.fields.id.textContent = job.id;
  row.fields.id.title = job.id;
  row.fields.params.textContent = paramsText(job.params);
  row.bar.setAttribute("aria-label", `Progress of ${job.type} job ${job.id}`);
  row.cancel.setAttribute("aria-label", `Cancel ${job.type} job ${job.id}`);
  row.copy.setAttribute("aria-label", `Copy the id of ${job.type} job ${job.id}`);
  row.cancel.addEventListener("click", () => cancelJob(row));
  row.copy.addEventListener("click", () => copyID(row));
  rows.set(job.id, row);
  if (prepend) list.prepend(el); else list.append(el);
  updateEmpty();
  applySnapshot(row, job, true);
  if (!TERMINAL.has(row.state)) watch(row, fresh ? {} : {after: job.last_seq || 0, epoch: job.epoch || ""});
  return row;
}

async function copyID(row) {
  try {
    await navigator.clipboard.writeText(row.id);
    row.copy.textContent = "Copied";
  } catch {
    // No clipboard (an insecure origin, a refused permission): select the
    // id so a keyboard copy takes it.
    getSelection().selectAllChildren(row.fields.id);
    row.copy.textContent = "Selected: copy it";
  }
  clearTimeout(row.copyTimer);
  row.copyTimer = setTimeout(() => { row.copy.textContent = "Copy id"; }, 2500);
}

function updateEmpty() {
  noJobs.hidden = rows.size > 0;
  noJobs.textContent = filter.state || filter.type ? "No jobs match the filter." : "No jobs yet.";
}

function paramsText(params) {
  if (!params || typeof params !== "object") return "";
  return Object.entries(params).map(([k, v]) => `${k} = ${typeof v === "string" ? v : JSON.stringify(v)}`).join(" · ");
}

function watch(row, from) {
  ts.subscribe("job:" + row.id, {
    onEvent: (frame) => applyEvent(row, frame),
    onReset: () => refresh(row),
    onEnd: () => refresh(row),
    onError: (err) => {
      if (!TERMINAL.has(row.state)) showRowError(row, `Live updates stopped: ${err.message}`);
    },
  }, from);
}

async function refresh(row) {
  const r = await api("GET", "/api/jobs/" + encodeURIComponent(row.id));
  if (r.ok) applySnapshot(row, r.data, false);
}

function applySnapshot(row, job, initial) {
  row.lastUpdate = Date.now();
  // A snapshot older than the events already shown must not move the
  // state or the bar back; its result, error and artifact still count.
  const stale = !initial && job.epoch === row.epoch && typeof job.last_seq === "number" && job.last_seq < row.seq;
  if (!stale) {
    setState(row, job.state, !initial);
    setAttempt(row, job.attempt);
    if (job.progress) setProgress(row, job.progress);
    row.seq = Math.max(row.seq, job.last_seq || 0);
    if (job.epoch) row.epoch = job.epoch;
  }
  if (row.state === "scheduled" && job.run_at) setLog(row, scheduledText(job.run_at));
  if (Number.isFinite(parseTime(job.started_at))) row.started = parseTime(job.started_at);
  if (Number.isFinite(parseTime(job.finished_at))) row.finished = parseTime(job.finished_at);
  if (job.result !== null && job.result !== undefined) setResult(row, job.result);
  // The error of the job's state: a completed job has none, whatever an
  // earlier attempt said (that stays on the job's page, in its timeline).
  if (row.state === "completed") showRowError(row, "");
  else if (job.error && (TERMINAL.has(row.state) || row.state === "retry")) showRowError(row, job.error);
  if (typeof job.artifact === "string") setArtifact(row, job.artifact, job.artifact_size);
  if (row.state === "completed") setPercent(row, 100);
  renderTimes(row);
  renderLive(row);
}

function applyEvent(row, f) {
  row.seq = f.seq;
  row.lastUpdate = Date.now();
  if (f.epoch) row.epoch = f.epoch;
  const d = f.data || {};
  const at = parseTime(f.ts);
  switch (f.event) {
    case "state":
      setState(row, d.state, true);
      if (d.attempt) setAttempt(row, d.attempt);
      if (d.state === "active" && !Number.isFinite(row.started)) row.started = at;
      if (TERMINAL.has(d.state)) row.finished = at;
      if (d.state === "retry" && d.error) showRowError(row, `${d.attempt ? "Attempt " + d.attempt : "An attempt"} failed: ${d.error}`);
      else if (d.state === "active" || d.state === "completed") showRowError(row, "");
      if (d.message) setLog(row, d.message);
      else if (d.state === "scheduled" && d.run_at) setLog(row, scheduledText(d.run_at));
      else if (d.state === "active" && row.fields.log.textContent.startsWith("Scheduled")) setLog(row, "");
      if (d.state === "completed") setPercent(row, 100);
      renderTimes(row);
      break;
    case "progress":
      setProgress(row, d);
      break;
    case "log":
      if (typeof d.message === "string") setLog(row, d.message);
      break;
    case "result":
      setResult(row, d.result);
      break;
    case "failed":
      showRowError(row, typeof d.error === "string" ? d.error : "failed");
      break;
    default:
  }
  renderLive(row);
}

function setState(row, state, announceIt) {
  if (typeof state !== "string" || !state || row.state === state) return;
  row.state = state;
  row.el.dataset.state = state;
  row.fields.state.textContent = state;
  const finished = TERMINAL.has(state);
  row.cancel.hidden = finished;
  row.el.classList.toggle("finished", finished);
  if (finished && row.progress) setProgress(row, row.progress);
  if (announceIt) announce(`${row.type} job ${row.id}: ${state}.`);
}

function setAttempt(row, attempt) {
  row.fields.attempt.textContent = attempt ? `attempt ${attempt}` : "";
}

function setPercent(row, pct) {
  const p = Math.max(0, Math.min(100, Number(pct) || 0));
  const shown = Math.floor(p);
  row.bar.setAttribute("aria-valuenow", String(shown));
  row.bar.setAttribute("aria-valuetext", `${shown}%`);
  row.fill.style.width = p + "%";
  row.fields.percent.textContent = shown + "%";
}

function setProgress(row, p) {
  row.progress = p;
  if (typeof p.percent === "number" && row.state !== "completed") setPercent(row, p.percent);
  const f = row.fields;
  const count = typeof p.done === "number" && typeof p.total === "number" && p.total > 0
    ? `${fmtNum(p.done)} / ${fmtNum(p.total)}` : "";
  const message = typeof p.message === "string" ? p.message : "";
  f.stage.textContent = p.stage || "";
  f.message.textContent = message || count;
  // Rate and ETA are only true while the job runs and the page hears
  // about it: not once it ended, nor while the connection is lost.
  const live = !TERMINAL.has(row.state) && online;
  f.rate.textContent = live && p.rate > 0 ? `${fmtNum(p.rate)}/s` : "";
  f.eta.textContent = live && p.eta_s > 0 ? `ETA ${fmtDuration(p.eta_s)}` : "";
}

// renderTimes shows when the job was created, started and finished, and
// how long it waited or ran (counted while it runs).
function renderTimes(row) {
  const f = row.fields;
  setTime(f.created, row.created, "unknown");
  f.startedWrap.hidden = !Number.isFinite(row.started);
  if (Number.isFinite(row.started)) setTime(f.started, row.started);
  f.finishedWrap.hidden = !Number.isFinite(row.finished) || !TERMINAL.has(row.state);
  if (!f.finishedWrap.hidden) setTime(f.finished, row.finished);
  const now = Date.now();
  let text = "";
  if (TERMINAL.has(row.state)) {
    if (Number.isFinite(row.started) && Number.isFinite(row.finished)) text = `took ${fmtDuration((row.finished - row.started) / 1000)}`;
    else if (!Number.isFinite(row.started)) text = "never ran";
  } else if (Number.isFinite(row.started)) {
    text = `running ${fmtDuration(Math.max(0, now - row.started) / 1000)}`;
  } else if (Number.isFinite(row.created)) {
    text = `waiting ${fmtDuration(Math.max(0, now - row.created) / 1000)}`;
  }
  f.duration.textContent = text;
}

// renderLive says honestly what the page knows of a running job while the
// connection is lost: when it last heard of it; no ETA; no Cancel (it
// could not be sent).
function renderLive(row) {
  const finished = TERMINAL.has(row.state);
  const lost = !online && offlineSince > 0 && !finished;
  row.el.classList.toggle("stale", lost);
  row.fields.stale.hidden = !lost;
  if (lost) {
    const ago = fmtDuration(Math.floor(Math.max(0, Date.now() - row.lastUpdate) / 1000));
    row.fields.stale.textContent = `Connection lost, last update ${ago} ago. Cancel works again once it is back.`;
  }
  row.cancel.disabled = finished || lost || row.canceling;
  row.cancel.title = lost ? "Offline: the cancel could not be sent; it works again once the connection is back" : "";
  if (row.progress) setProgress(row, row.progress);
}

watchOnline(ts, (on, since) => {
  online = on;
  offlineSince = since;
  for (const row of rows.values()) renderLive(row);
});

// Durations and "last update" counts go on while nothing arrives.
setInterval(() => {
  for (const row of rows.values()) {
    if (TERMINAL.has(row.state)) continue;
    renderTimes(row);
    if (!online) renderLive(row);
  }
}, 1000);

function setLog(row, text) {
  row.fields.log.textContent = text;
  row.fields.log.hidden = !text;
}

// scheduledText says when a scheduled job runs, in the reader's time zone.
function scheduledText(runAt) {
  const at = new Date(runAt);
  return isNaN(at) ? "Scheduled" : `Scheduled for ${at.toLocaleString()}`;
}

// setResult shows the result's top-level values on one line; the job's
// page (the link) shows all of it, as tables.
function setResult(row, result) {
  row.fields.result.textContent = resultLine(result);
  row.fields.resultLink.href = "/jobs/" + encodeURIComponent(row.id);
  row.fields.resultBox.hidden = false;
}

function resultLine(v) {
  const one = (x) => typeof x === "number" ? fmtNum(x) : x === null ? "null"
    : typeof x === "object" ? (Array.isArray(x) ? `${x.length} items` : `{${Object.keys(x).length} fields}`) : String(x);
  const line = v !== null && typeof v === "object" && !Array.isArray(v)
    ? Object.entries(v).map(([k, x]) => `${k} = ${one(x)}`).join(" · ") : one(v);
  return line.length > 160 ? line.slice(0, 159) + "…" : line;
}

function setArtifact(row, href, size) {
  // Only a link on this server: never a javascript: or foreign URL.
  let url;
  try { url = new URL(href, location.origin); } catch { return; }
  if (url.origin !== location.origin) return;
  row.fields.artifact.href = url.pathname + url.search;
  row.fields.artifact.textContent = typeof size === "number" ? `Download the CSV (${fmtBytes(size)})` : "Download the CSV";
  row.fields.artifact.hidden = false;
}

function showRowError(row, text) {
  row.fields.error.textContent = text;
  row.fields.error.hidden = !text;
}

async function cancelJob(row) {
  row.canceling = true;
  row.cancel.disabled = true;
  const r = await api("POST", `/api/jobs/${encodeURIComponent(row.id)}/cancel`);
  if (r.ok) {
    applySnapshot(row, r.data, false);
    if (!TERMINAL.has(row.state)) row.cancel.textContent = "Canceling…";
    return;
  }
  if (r.status === 409) {
    refresh(row);
    return;
  }
  row.canceling = false;
  renderLive(row);
  showRowError(row, r.error.message);
}

async function loadJobs({more = false} = {}) {
  const gen = more ? listGen : ++listGen;
  const q = new URLSearchParams({limit: String(PAGE)});
  if (filter.state) q.set("state", filter.state);
  if (filter.type) q.set("type", filter.type);
  if (more) q.set("before", next);
  loadMoreButton.disabled = true;
  const r = await api("GET", "/api/jobs?" + q);
  if (gen !== listGen) return;
  loadMoreButton.disabled = false;
  if (!r.ok || !r.data || !Array.isArray(r.data.jobs)) {
    listError.textContent = "Could not load the jobs: " + (r.error ? r.error.message : "bad answer");
    listError.hidden = false;
    return;
  }
  listError.hidden = true;
  // Newest first, as the API sends them; jobs submitted meanwhile are
  // already at the top.
  for (const job of r.data.jobs) addJob(job);
  next = typeof r.data.next === "string" ? r.data.next : "";
  loadMoreButton.hidden = !next;
  updateEmpty();
  if (!more) showLinkedJob();
}

loadMoreButton.addEventListener("click", () => loadJobs({more: true}));

// applyFilter shows the jobs the filter selects, from the newest; the
// filter is kept in the address, so a reload or a link keeps it.
async function applyFilter() {
  filter.state = stateFilter.value;
  filter.type = typeFilter.value;
  for (const row of rows.values()) {
    if (!TERMINAL.has(row.state)) ts.unsubscribe("job:" + row.id);
    row.el.remove();
  }
  rows.clear();
  next = "";
  loadMoreButton.hidden = true;
  const q = new URLSearchParams();
  if (filter.state) q.set("state", filter.state);
  if (filter.type) q.set("type", filter.type);
  history.replaceState(null, "", location.pathname + (q.size ? "?" + q : "") + location.hash);
  await loadJobs();
}
stateFilter.addEventListener("change", applyFilter);
typeFilter.addEventListener("change", applyFilter);

{
  const q = new URLSearchParams(location.search);
  filter.state = q.get("state") || "";
  filter.type = q.get("type") || "";
  stateFilter.value = filter.state;
  if (stateFilter.value !== filter.state) filter.state = stateFilter.value = "";
  // The type's option exists once the job types are loaded (loadJobTypes).
  if (filter.type) typeFilter.append(new Option(filter.type, filter.type));
  typeFilter.value = filter.type;
}

// onUserEvent adds a job submitted elsewhere (another tab, a program) as
// it is announced on the user's group.
function onUserEvent(f, {old, loadedAt}) {
  if (f.event !== "submitted" || !f.data || typeof f.data.id !== "string") return;
  // The group's history is older news, except what came while the list loaded.
  if (old && !(parseTime(f.ts) >= loadedAt)) return;
  if (rows.has(f.data.id) || !matches(f.data)) return;
  // A new job's history is short: all of it, as for a job submitted here.
  addJob(f.data, {prepend: true, fresh: true});
  announce(`Job ${f.data.id} (${f.data.type}) was submitted elsewhere.`);
}

// showLinkedJob brings the job of a "#job-ID" link into view: the rows
// arrive after the browser looked for the anchor.
function showLinkedJob() {
  const m = /^#job-(.+)$/.exec(location.hash);
  const row = m && rows.get(decodeURIComponent(m[1]));
  if (!row) return;
  row.el.scrollIntoView({block: "center"});
  row.el.classList.add("linked");
  row.el.tabIndex = -1;
  row.el.focus({preventScroll: true});
}
addEventListener("hashchange", () => {
  for (const r of rows.values()) r.el.classList.remove("linked");
  showLinkedJob();
});

showWho();
loadJobTypes();
loadJobs();
