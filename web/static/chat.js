// The chat page, /chat/ROOM: the room's messages (its history arrives as
// the replay of the group's log, then live), who is here, a form to post,
// and the caller's display name. Every string that comes from the server
// or another person is rendered with textContent, never as HTML.
import {TaskStream} from "./taskstream.js";
import {api, avoidToasts, me, setMe, showConnection, watchNotifications} from "./common.js";

const $ = (sel, root = document) => root.querySelector(sel);
const ROOM_NAME = /^[A-Za-z0-9_-]{1,64}$/;
const GROUP_MINUTES = 5; // a message within this time of the previous one by the same person joins its group

const room = (() => {
  const m = /^\/chat\/([^/]+)\/?$/.exec(location.pathname);
  let r = "";
  try { r = m ? decodeURIComponent(m[1]) : ""; } catch { /* malformed */ }
  return ROOM_NAME.test(r) ? r : "";
})();
const group = "chat:" + room;

const ts = new TaskStream({url: location.origin});
window.__ts = ts; // for tests and the curious

const list = $("#messages");
const noMessages = $("#no-messages");
const jump = $("#jump");
const composer = $("#composer");
const input = $("#message-input");
const chatError = $("#chat-error");
const presenceList = $("#presence");
const presenceCount = $("#presence-count");
const myName = $("#my-name");
const renameToggle = $("#rename-toggle");
const nameForm = $("#name-form");
const nameInput = $("#name-input");
const nameError = $("#name-error");

let user = null; // {id, name, email, guest}
let lastEvent = null; // the last join, leave or message shown: {event, userId, el, ts}
let replayLeft = 0; // history events still to come after subscribing
// Who is here: id → name. It starts from each `subscribed` answer's
// users (the room's members as of its last_seq) and then follows the
// join, leave and rename events, replayed or live, as set operations;
// the server publishes a user's changes in order, so however the list
// and the events raced, the last word on each user is right.
const members = new Map();
let listed = false; // a member list arrived (a `subscribed` with users, or the API's)
let inflight = null; // while the API's list is being read: the events applied meanwhile

showConnection(ts, $("#conn"));
// Toasts never cover the header, the composer or the messages being sent.
avoidToasts(() => [$("header.top"), composer, $("#outbox")]);
$("#room-name").textContent = "#" + (room || "?");
document.title = `#${room || "?"} · taskstream chat`;

// ---- helpers --------------------------------------------------------------------

function showError(el, text) {
  el.textContent = text;
  el.hidden = !text;
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function nearBottom() {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

function scrollToEnd() {
  list.scrollTop = list.scrollHeight;
  jump.hidden = true;
}

function timeOf(ts) {
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? null : d;
}

function memberName(u) {
  return u && typeof u.name === "string" && u.name ? u.name : u && typeof u.id === "string" ? u.id : "someone";
}

// ---- the message list -------------------------------------------------------------

// append adds a row and keeps the list at its end when the reader was
// there (or it is their own message); otherwise it offers a jump.
function append(row, {mine = false} = {}) {
  const stick = mine || replayLeft > 0 || nearBottom();
  list.append(row);
  noMessages.hidden = true;
  if (stick) scrollToEnd();
  else jump.hidden = false;
}

function renderMessage(f) {
  const d = f.data || {};
  if (typeof d.text !== "string") return;
  const author = d.user || {};
  const mine = !!user && author.id === user.id;
  const when = timeOf(f.ts);
  const row = el("li", "msg");
  row.dataset.seq = String(f.seq);
  if (typeof d.id === "string") row.dataset.id = d.id;
  if (typeof author.id === "string") row.dataset.user = author.id;
  if (mine) row.classList.add("mine");
  // Consecutive messages by one person share a visible header; the name
  // stays in the row for screen readers and copy-paste.
  const prev = lastEvent;
  if (prev && prev.event === "message" && prev.userId === author.id && when && prev.ts &&
      when - prev.ts < GROUP_MINUTES * 60000) {
    row.classList.add("cont");
  }
  const head = el("p", "msg-head");
  head.append(el("span", "msg-author", memberName(author)));
  if (mine) head.append(el("span", "msg-you", " (you)"));
  if (when) {
    const t = el("time", "msg-time", when.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"}));
    t.dateTime = when.toISOString();
    t.title = when.toLocaleString();
    head.append(" ", t);
  }
  row.append(head, el("p", "msg-text", d.text));
  // The room's copy of the message in flight may come before its
  // acknowledgement: show it once.
  if (mine && outbox.length > 0 && outbox[0].text === d.text) outbox[0].row.hidden = true;
  append(row, {mine});
  lastEvent = {event: "message", userId: author.id, el: row, ts: when};
}

// renderJoinLeave shows "NAME joined" and "NAME left" as system lines. A
// leave directly followed by the same person's join is one person
// reconnecting (a reload, or a new name): the pair is folded into one line
// for a rename, or into nothing.
function renderJoinLeave(f) {
  const u = (f.data && f.data.user) || {};
  const name = memberName(u);
  if (f.event === "join" && lastEvent && lastEvent.event === "leave" && lastEvent.userId === u.id) {
    const oldName = lastEvent.name;
    if (oldName === name) {
      lastEvent.el.remove();
    } else {
      lastEvent.el.textContent = `${oldName} is now ${name}`;
      lastEvent.el.classList.add("rename");
    }
    lastEvent = {event: "rename", userId: u.id};
    if (!list.children.length) noMessages.hidden = false;
    return;
  }
  const row = el("li", "sys", f.event === "join" ? `${name} joined` : `${name} left`);
  row.dataset.seq = String(f.seq);
  row.dataset.event = f.event;
  append(row);
  lastEvent = {event: f.event, userId: u.id, name, el: row};
}

// renderRename shows "OLD is now NEW" for a display-name change.
function renderRename(f) {
  const u = (f.data && f.data.user) || {};
  const old = typeof f.data.old === "string" && f.data.old ? f.data.old : "someone";
  const row = el("li", "sys rename", `${old} is now ${memberName(u)}`);
  row.dataset.seq = String(f.seq);
  row.dataset.event = f.event;
  append(row);
  lastEvent = {event: "rename", userId: u.id};
}

// setMembers replaces the member list with users (from a `subscribed`
// answer or the presence API).
function setMembers(users) {
  members.clear();
  for (const u of users) {
    if (u && typeof u.id === "string") members.set(u.id, u);
  }
  listed = true;
  renderPresence();
}

// applyPresence applies a join, leave or rename to the member list.
function applyPresence(f) {
  const u = f.data && f.data.user;
  if (!u || typeof u.id !== "string") return;
  if (inflight) inflight.push(f);
  if (f.event === "join") members.set(u.id, u);
  else if (f.event === "leave") members.delete(u.id);
  else if (f.event === "rename" && members.has(u.id)) members.set(u.id, u);
  renderPresence();
}

function renderPresence() {
  const list = [...members.values()].sort((a, b) => memberName(a).localeCompare(memberName(b)) || (a.id < b.id ? -1 : 1));
  presenceList.replaceChildren(...list.map((u) => {
    const li = el("li", "member");
    li.dataset.user = u.id;
    li.append(el("span", "member-name", memberName(u)));
    if (user && u.id === user.id) {
      li.classList.add("me");
      li.append(el("span", "member-you", " (you)"));
    }
    return li;
  }));
  presenceCount.textContent = `(${list.length})`;
}

// fetchMembers reads the member list from the API, for a transport whose
// answers carry none (long-poll): the events handled so far were
// published before this read, so the list covers them, and the ones
// handled after it apply on top.
// An event handled while the request is out may be newer than the list:
// those are applied again on top of it, in order (set operations do not
// mind the repeat).
async function fetchMembers() {
  inflight = [];
  const r = await api("GET", `/api/groups/${encodeURIComponent(group)}/presence`);
  const meanwhile = inflight;
  inflight = null;
  if (!r.ok || !r.data || !Array.isArray(r.data.users) || listed) return;
  setMembers(r.data.users);
  for (const f of meanwhile) applyPresence(f);
}

function onEvent(f) {
  switch (f.event) {
    case "message":
      renderMessage(f);
      break;
    case "join":
    case "leave":
      renderJoinLeave(f);
      applyPresence(f);
      break;
    case "rename":
      renderRename(f);
      applyPresence(f);
      break;
    default: // "presence" lists are no longer sent; an old history's are ignored
  }
  if (!listed && !inflight) fetchMembers(); // a transport without `subscribed` answers
  if (replayLeft > 0 && --replayLeft === 0) {
    list.removeAttribute("aria-busy");
    scrollToEnd();
  }
}

function subscribeRoom(from = {}) {
  let first = true;
  ts.subscribe(group, {
    onEvent,
    onSubscribed(info) {
      // Every answer (a reconnection's too) brings the members as of its
      // last_seq; the events after it follow.
      if (Array.isArray(info.users)) setMembers(info.users);
      if (!first) return;
      first = false;
      // Announce only what is new, not the history being replayed.
      replayLeft = Number(info.replayed) || 0;
      if (replayLeft > 0) list.setAttribute("aria-busy", "true");
    },
    onReset() {
      // The room's log was lost or trimmed past what is shown: start over
      // from the history that is replayed next.
      list.replaceChildren();
      lastEvent = null;
      noMessages.hidden = false;
    },
    onError(err) {
      showError(chatError, `This room cannot be shown: ${err.message}`);
    },
  }, from);
}

jump.addEventListener("click", () => {
  scrollToEnd();
  input.focus();
});
list.addEventListener("scroll", () => { if (nearBottom()) jump.hidden = true; }, {passive: true});

// ---- posting ------------------------------------------------------------------------

// The outbox: Enter takes the composer's text out at once and queues it,
// so what is typed next is never touched, and an Enter pressed while a
// message is on its way queues the next one. The queue is sent one
// message at a time, in order; a refused message and the ones queued
// after it go back into the composer, ahead of what was typed since.
const OUTBOX_MAX = 20; // a bound on unsent messages; beyond it Enter says to wait
const outbox = []; // {text, row} in sending order; the first is in flight
const outboxList = $("#outbox");
let sending = false;

function errorText(err) {
  switch (err.code) {
    case "rate_limited":
      return "You are sending messages too fast. Wait a moment" +
        (err.retryAfter ? ` (${err.retryAfter} s)` : "") + " and try again.";
    case "network":
    case "timeout":
      return "The message may not have been sent: " + err.message + ". Check the list and try again.";
    default:
      return err.message || "The message was not sent.";
  }
}

function send() {
  const text = input.value.trim();
  if (!text) {
    showError(chatError, "Write something first.");
    input.focus();
    return;
  }
  if ([...text].length > 2000) {
    showError(chatError, "A message is at most 2000 characters.");
    return;
  }
  if (outbox.length >= OUTBOX_MAX) {
    showError(chatError, "Wait a moment: the messages above are still being sent.");
    return;
  }
  input.value = "";
  fitInput();
  showError(chatError, "");
  const row = el("li", "pending");
  row.append(el("span", "pending-text", text), el("span", "pending-state", " sending…"));
  outboxList.append(row);
  outboxList.hidden = false;
  outbox.push({text, row});
  input.focus(); // after a click on Send, typing goes on in the composer
  pump();
}

// pump sends the outbox in order; one runs at a time.
async function pump() {
  if (sending) return;
  sending = true;
  try {
    while (outbox.length > 0) {
      const m = outbox[0];
      try {
        await ts.publish(group, {text: m.text});
      } catch (err) {
        giveBack();
        showError(chatError, errorText(err));
        return;
      }
      outbox.shift();
      m.row.remove();
    }
  } finally {
    sending = false;
    outboxList.hidden = outbox.length === 0;
  }
}

// giveBack empties the outbox into the composer: the unsent messages, one
// a line, before whatever was typed meanwhile, so nothing typed is lost.
function giveBack() {
  const unsent = outbox.splice(0).map((m) => {
    m.row.remove();
    return m.text;
  });
  const typed = input.value.trim() ? [input.value] : [];
  input.value = [...unsent, ...typed].join("\n");
  fitInput();
  input.focus();
}

composer.addEventListener("submit", (e) => {
  e.preventDefault();
  send();
});
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});
input.addEventListener("input", () => {
  fitInput();
  if (!chatError.hidden && input.value.trim()) showError(chatError, "");
});

// fitInput grows the textarea with its text, up to a few lines.
function fitInput() {
  input.style.height = "auto";
  input.style.height = Math.min(input.scrollHeight + 2, 160) + "px";
}

// ---- the display name ---------------------------------------------------------------

function showName() {
  myName.textContent = user ? user.name : "?";
  if (user && user.email) myName.title = user.email;
}

function openNameForm(open) {
  nameForm.hidden = !open;
  renameToggle.setAttribute("aria-expanded", String(open));
  showError(nameError, "");
  if (open) {
    nameInput.value = user ? user.name : "";
    nameInput.focus();
    nameInput.select();
  } else {
    renameToggle.focus();
  }
}

renameToggle.addEventListener("click", () => openNameForm(nameForm.hidden));
$("#name-cancel").addEventListener("click", () => openNameForm(false));
nameForm.addEventListener("keydown", (e) => { if (e.key === "Escape") openNameForm(false); });

nameForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = nameInput.value.trim();
  if (!name) {
    showError(nameError, "Enter a name.");
    return;
  }
  if (user && name === user.name) {
    openNameForm(false);
    return;
  }
  const save = $("#name-save");
  save.disabled = true;
  const r = await api("POST", "/api/me", {name});
  save.disabled = false;
  if (!r.ok) {
    showError(nameError, r.error.message);
    nameInput.focus();
    return;
  }
  user = r.data;
  setMe(user);
  showName();
  if (members.has(user.id)) members.set(user.id, {id: user.id, name: user.name});
  renderPresence();
  openNameForm(false);
  // The server announces the new name to the room (a "rename" event) and
  // uses it for later messages from every tab.
});

// ---- start --------------------------------------------------------------------------

async function start() {
  if (!room) {
    showError(chatError, "This is not a chat room: a room name is 1 to 64 letters, digits, _ or -.");
    composer.querySelectorAll("textarea, button").forEach((e) => { e.disabled = true; });
    return;
  }
  try {
    user = await me();
  } catch (err) {
    showError(nameError, "Could not load your name: " + err.message);
  }
  showName();
  subscribeRoom();
  watchNotifications(ts);
}

start();
