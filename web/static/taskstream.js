/**
 * taskstream.js — a dependency-free client for taskstream's live groups.
 *
 * One TaskStream holds ONE WebSocket (`/ws`) that carries any number of
 * groups ("job:ID", "chat:ROOM", "user:ID", "dashboard"). For each group it
 * remembers the last `seq` and `epoch` it delivered, so after a dropped
 * connection it resumes with `after` + `epoch` and delivers every event once,
 * in order. When the socket cannot be used at all (no `WebSocket`, or
 * `socketFailures` failed attempts before one ever opened) it falls back to
 * Server-Sent Events and then to JSON long-poll, one HTTP stream per group on
 * `GET /api/groups/{group}/events`, with the same guarantees.
 *
 *   new TaskStream({url, socketFailures, minDelay, maxDelay, eventNames, wait, maxStreams})
 *     url             server origin, default location.origin
 *     socketFailures  socket attempts that fail before one ever opened,
 *                     after which SSE is used (default 3)
 *     minDelay, maxDelay  reconnect backoff in ms: minDelay doubling up to
 *                     maxDelay, each delay jittered by ±50% (250, 10000)
 *     eventNames      extra SSE event names to listen to, besides the ones of
 *                     docs/protocol.md (EventSource only reports named events that
 *                     it was told about)
 *     wait            long-poll wait in seconds (default 25)
 *     maxStreams      HTTP fallbacks only: groups streamed at once (default
 *                     4, as HTTP/1.1 allows 6 connections per server); the
 *                     others wait until one ends
 *   The socket offers the subprotocol "taskstream.v2" (several frames per
 *   message, lean event frames); handlers see the same frames either way.
 *   ts.subscribe(group, handlers, {after, epoch}?) → unsubscribe function
 *     handlers.onEvent(frame)   each event once, in seq order: the socket's
 *                               event frame {type,group,seq,epoch,event,data,ts}.
 *                               On a job whose events come faster than this
 *                               client reads them, a `progress` frame may carry
 *                               `skipped` N: it stands in for N earlier progress
 *                               events the server dropped (their seqs never
 *                               arrive); other events are never skipped
 *     handlers.onReset(info)    the server lost or trimmed history the client
 *                               had not seen ({group,epoch,last_seq,reason}):
 *                               reload the group's snapshot (GET /api/jobs/ID);
 *                               the retained history is replayed after it
 *     handlers.onSubscribed(info)  each `subscribed` answer (optional)
 *     handlers.onError(err)     {group,code,message}: the subscribe was
 *                               refused (e.g. not_found), or later the server
 *                               could no longer serve the group; it is dropped
 *                               unless the error is transient (then it is
 *                               subscribed again with the next connection)
 *     handlers.onEnd(group)     a job group delivered its final event
 *     {after, epoch}            start after this position (e.g. a snapshot's
 *                               last_seq and epoch) instead of the full history
 *   ts.unsubscribe(group) → Promise, resolved once the server confirmed it
 *                     (at once when no socket is open)
 *   ts.publish(group, data) → Promise of {group, via}: sends {"op": "publish"}
 *                     over the socket and resolves on the server's `published`
 *                     answer (via "websocket"); without an open socket it
 *                     POSTs data to /api/groups/{group}/messages (via "http").
 *                     Rejects with an Error carrying code and message (the
 *                     server's: rate_limited, bad_request, forbidden ...;
 *                     "network" when the answer was lost, "timeout"), and
 *                     retryAfter in seconds when the server gave one.
 *   ts.reconnect()    opens a new connection now and resumes every group: the
 *                     server reads who the caller is when a socket opens, so
 *                     call it after that changed (a new display name, sign-in).
 *                     Also retries after the server refused the socket (1008).
 *   ts.onStatus(fn) → off function; fn({state, transport, reason}) now and on
 *     every change. state: "connecting" | "connected" | "reconnecting" |
 *     "offline"; transport: "websocket" | "sse" | "longpoll".
 *   ts.status         the current status object
 *   ts.position(group) → {seq, epoch} last delivered
 *   ts.delivered(group) → [seq, ...] delivered in the current epoch (debug)
 *   ts.close()        ends everything; the client cannot be reused
 *   ts.dropConnection()  test hook: drops the socket (or the HTTP streams) as
 *                     if the network failed; the client reconnects and resumes
 *
 * Job groups end by themselves: after a job's final event (`result`,
 * `failed`, or `state` with data.state "canceled") the client stops watching
 * the group (unsubscribes the socket, closes the stream) and calls onEnd.
 * Close codes: 1000 normal and 1008 policy stop the client ("offline");
 * anything else (1001 going away, 1013 too slow, 1006 dropped) reconnects
 * and resumes.
 *
 * Example:
 *
 *   import {TaskStream} from "/static/taskstream.js";
 *   const ts = new TaskStream({url: location.origin});
 *   ts.onStatus(({state, transport}) => badge.textContent = `${state} (${transport})`);
 *   const res = await fetch("/api/jobs", {method: "POST", headers: {"Content-Type": "application/json"},
 *     body: JSON.stringify({type: "steps", params: {steps: 20}})});
 *   const job = await res.json();
 *   ts.subscribe("job:" + job.id, {
 *     onEvent(f) { if (f.event === "progress") bar.value = f.data.percent; },
 *     onReset() { fetch("/api/jobs/" + job.id).then((r) => r.json()).then(render); },
 *   });
 */

// Event names of docs/protocol.md; SSE listeners are registered for these.
const KNOWN_EVENTS = ["state", "progress", "log", "result", "failed", "message", "join", "leave", "rename",
  "presence", "notification", "submitted", "stats"];

// The socket subprotocol offered: batched messages (frames separated by
// "\n") and lean event frames (docs/protocol.md, "Subprotocol
// taskstream.v2"). A server without it answers in v1; both are decoded.
export const SUBPROTOCOL_V2 = "taskstream.v2";

/**
 * decodeFrames turns one socket message into full (v1-shaped) frames: it
 * splits a taskstream.v2 message at "\n" and fills in what lean event
 * frames leave out: type "event", the epoch (from epochs, the socket's
 * last epoch per group, which it keeps up to date) and ts in RFC 3339
 * (a lean ts is milliseconds since 1970 in base 36). Frames that are not
 * JSON objects are skipped.
 */
export function decodeFrames(data, epochs) {
  const out = [];
  for (const line of String(data).split("\n")) {
    if (!line.trim()) continue;
    let f;
    try { f = JSON.parse(line); } catch { continue; }
    if (!f || typeof f !== "object") continue;
    if (f.type === undefined && typeof f.seq === "number") {
      f.type = "event";
      if (typeof f.ts === "string") {
        const ms = parseInt(f.ts, 36);
        if (Number.isFinite(ms)) f.ts = new Date(ms).toISOString();
      }
    }
    if (typeof f.group === "string") {
      if (f.type === "subscribed") epochs.set(f.group, f.epoch || "");
      else if (f.type === "unsubscribed") epochs.delete(f.group);
      else if (f.type === "event") {
        if (f.epoch) epochs.set(f.group, f.epoch);
        else if (epochs.has(f.group)) f.epoch = epochs.get(f.group);
      }
    }
    out.push(f);
  }
  return out;
}

// Error codes after which a group is worth asking for again.
const TRANSIENT = new Set(["unavailable", "internal", "rate_limited"]);

function requestError(code, message, retryAfter) {
  const err = new Error(message || code);
  err.code = code;
  if (retryAfter !== undefined) err.retryAfter = retryAfter;
  return err;
}

/** isFinalJobEvent reports whether frame is the last event of a job group. */
export function isFinalJobEvent(frame) {
  if (!frame || typeof frame.group !== "string" || !frame.group.startsWith("job:")) return false;
  if (frame.event === "result" || frame.event === "failed") return true;
  return frame.event === "state" && frame.data != null && frame.data.state === "canceled";
}

export class TaskStream {
  constructor(opts = {}) {
    const base = opts.url || (typeof location !== "undefined" ? location.origin : "");
    this._base = String(base).replace(/\/+$/, "");
    this._wsURL = this._base.replace(/^http/, "ws") + "/ws";
    this._minDelay = opts.minDelay ?? 250;
    this._maxDelay = opts.maxDelay ?? 10000;
    this._maxSocketFailures = opts.socketFailures ?? 3;
    this._wait = opts.wait ?? 25;
    this._maxStreams = Math.max(1, opts.maxStreams ?? 4);
    this._eventNames = [...new Set([...KNOWN_EVENTS, ...(opts.eventNames || [])])];
    this._WS = "WebSocket" in opts ? opts.WebSocket : globalThis.WebSocket;
    this._ES = "EventSource" in opts ? opts.EventSource : globalThis.EventSource;
    this._crossOrigin = typeof location !== "undefined" && new URL(this._base || location.origin, location.href).origin !== location.origin;

    this._groups = new Map(); // group → its state, see subscribe()
    this._listeners = new Set();
    this._status = {state: "connecting", transport: "websocket", reason: ""};
    this._closed = false;
    this._stopped = false; // the server closed the socket for good (1000, 1008)

    // socket state
    this._ws = null;
    this._wsOpen = false;
    this._everOpened = false;
    this._attempt = 0; // consecutive failed attempts, for the backoff
    this._failuresBeforeOpen = 0;
    this._timer = null;
    this._ref = 0;
    this._refs = new Map(); // ref → group of a pending subscribe
    this._requests = new Map(); // ref → {resolve, reject, timer} of a pending publish or unsubscribe
    this._lastRx = 0;
    this._pingAt = 0;
    this._heartbeat = null;
    this._sseFailures = 0;
    this._sseEverOpened = false;

    this._onOnline = () => this._networkBack();
    this._onOffline = () => this._networkLost();
    if (typeof addEventListener === "function") {
      addEventListener("online", this._onOnline);
      addEventListener("offline", this._onOffline);
    }

    if (typeof this._WS !== "function") {
      this._useTransport("sse", "WebSocket is not available");
    } else {
      this._connect();
    }
  }

  // ---- public API -------------------------------------------------------

  get status() { return {...this._status}; }

  onStatus(fn) {
    this._listeners.add(fn);
    this._safe(() => fn(this.status));
    return () => this._listeners.delete(fn);
  }

  subscribe(group, handlers = {}, from = {}) {
    if (this._closed) throw new Error("taskstream: the client is closed");
    let g = this._groups.get(group);
    if (g) {
      g.handlers = handlers;
      return () => this.unsubscribe(group);
    }
    g = {
      group, handlers,
      seq: Math.max(0, Number(from.after) || 0), epoch: from.epoch || "",
      ranges: [], // delivered seqs in the current epoch, as [first, last] runs
      done: false, // a job group after its final event
      es: null, abort: null, timer: null, attempt: 0, open: false,
      slot: false, queued: false, // HTTP fallbacks: holds one of maxStreams, or waits for one
    };
    this._groups.set(group, g);
    if (this._status.transport === "websocket") {
      if (this._wsOpen) this._sendSubscribe(g);
    } else {
      this._startHTTP(g);
    }
    return () => this.unsubscribe(group);
  }

  unsubscribe(group) {
    const g = this._groups.get(group);
    if (!g) return Promise.resolve();
    this._groups.delete(group);
    this._release(g);
    this._updateHTTPStatus();
    if (this._wsOpen && !g.done) {
      // Nobody has to wait for the answer: never reject.
      return this._request({op: "unsubscribe", group}).catch(() => {});
    }
    return Promise.resolve();
  }

  publish(group, data) {
    if (this._closed) return Promise.reject(requestError("closed", "the client is closed"));
    if (this._status.transport === "websocket" && this._wsOpen) {
      return this._request({op: "publish", group, data}).then(() => ({group, via: "websocket"}));
    }
    return this._publishHTTP(group, data);
  }

  async _publishHTTP(group, data) {
    let res;
    let body = null;
    try {
      res = await fetch(this._base + "/api/groups/" + encodeURIComponent(group) + "/messages", {
        method: "POST", headers: {"Content-Type": "application/json", Accept: "application/json"},
        body: JSON.stringify(data), credentials: this._crossOrigin ? "include" : "same-origin",
      });
      body = await res.json().catch(() => null);
    } catch {
      throw requestError("network", "the server cannot be reached");
    }
    if (res.ok) return {group, via: "http"};
    const e = body && body.error ? body.error : {code: "http_" + res.status, message: "HTTP " + res.status};
    const retry = Number(res.headers.get("Retry-After"));
    throw requestError(e.code, e.message, Number.isFinite(retry) && retry > 0 ? retry : undefined);
  }

  // _request sends frame with a new ref and settles when the server answers
  // that ref: resolved by any reply but "error", rejected by an "error".
  _request(frame, timeout = 15000) {
    return new Promise((resolve, reject) => {
      const ref = "r" + (++this._ref);
      if (!this._send({...frame, ref})) {
        reject(requestError("network", "the connection is not open"));
        return;
      }
      const timer = setTimeout(() => {
        this._requests.delete(ref);
        reject(requestError("timeout", "the server did not answer in time"));
      }, timeout);
      this._requests.set(ref, {resolve, reject, timer});
    });
  }

  // _settle answers a pending request; it returns false for other refs.
  _settle(f) {
    const ref = f.ref != null ? String(f.ref) : "";
    const req = ref ? this._requests.get(ref) : undefined;
    if (!req) return false;
    this._requests.delete(ref);
    clearTimeout(req.timer);
    if (f.type === "error") req.reject(requestError(f.code, f.message));
    else req.resolve(f);
    return true;
  }

  // _failRequests rejects every pending request: their answers are lost
  // with the socket they were sent on.
  _failRequests(message) {
    const reqs = [...this._requests.values()];
    this._requests.clear();
    for (const req of reqs) {
      clearTimeout(req.timer);
      req.reject(requestError("network", message));
    }
  }

  reconnect() {
    if (this._closed) return;
    this._stopped = false;
    if (this._status.transport === "websocket") {
      clearTimeout(this._timer);
      clearInterval(this._heartbeat);
      if (this._ws) {
        const ws = this._ws;
        this._detach(ws);
        try { ws.close(1000, "reconnecting"); } catch { /* closing anyway */ }
      }
      this._ws = null;
      this._wsOpen = false;
      this._failRequests("the connection was replaced before the server answered");
      this._attempt = 0;
      this._connect();
      return;
    }
    for (const g of this._groups.values()) {
      if (g.slot && !g.done) {
        this._stopHTTP(g);
        g.attempt = 0;
        this._startHTTP(g);
      }
    }
    this._updateHTTPStatus();
  }

  position(group) {
    const g = this._groups.get(group);
    return g ? {seq: g.seq, epoch: g.epoch} : null;
  }

  delivered(group) {
    const g = this._groups.get(group);
    const out = [];
    if (g) for (const [a, b] of g.ranges) for (let s = a; s <= b; s++) out.push(s);
    return out;
  }

  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._timer);
    clearInterval(this._heartbeat);
    for (const g of this._groups.values()) this._stopHTTP(g);
    this._groups.clear();
    if (this._ws) {
      this._detach(this._ws);
      try { this._ws.close(1000, "client closed"); } catch { /* already closed */ }
      this._ws = null;
    }
    this._wsOpen = false;
    this._failRequests("the client was closed");
    if (typeof removeEventListener === "function") {
      removeEventListener("online", this._onOnline);
      removeEventListener("offline", this._onOffline);
    }
    this._setStatus("offline", this._status.transport, "closed");
  }

  dropConnection() {
    if (this._closed) return;
    if (this._status.transport === "websocket") {
      if (this._ws) this._socketLost(this._ws, {code: 1006, reason: "connection dropped (test)"});
      return;
    }
    for (const g of this._groups.values()) {
      if (g.slot && !g.done && (g.es || g.abort)) {
        this._stopHTTP(g);
        this._retryHTTP(g);
      }
    }
  }

  // ---- shared event handling -------------------------------------------

  _handleSubscribed(f) {
    const g = this._groups.get(f.group);
    if (!g) return;
    if (f.recovered === false) {
      this._reset(g, f.epoch || "", f.last_seq, "history lost");
    } else if (f.epoch) {
      if (g.epoch && g.epoch !== f.epoch) this._reset(g, f.epoch, f.last_seq, "epoch changed");
      g.epoch = f.epoch;
    }
    this._call(g, "onSubscribed", {group: g.group, epoch: f.epoch, last_seq: f.last_seq,
      replayed: f.replayed, recovered: f.recovered, users: f.users});
  }

  _reset(g, epoch, lastSeq, reason) {
    g.seq = 0;
    g.epoch = epoch;
    g.ranges = [];
    g.done = false;
    this._call(g, "onReset", {group: g.group, epoch, last_seq: lastSeq, reason});
  }

  // _handleEvent delivers f once; it returns true for a job's final event.
  _handleEvent(f) {
    const g = this._groups.get(f.group);
    if (!g || typeof f.seq !== "number") return false;
    if (f.epoch && g.epoch && f.epoch !== g.epoch) {
      // History was replaced without a "subscribed" saying so: start over.
      this._reset(g, f.epoch, f.seq, "epoch changed");
    }
    if (f.seq <= g.seq) return false; // a duplicate
    g.seq = f.seq;
    if (f.epoch) g.epoch = f.epoch;
    const last = g.ranges[g.ranges.length - 1];
    if (last && last[1] + 1 === f.seq) last[1] = f.seq;
    else g.ranges.push([f.seq, f.seq]);
    this._call(g, "onEvent", f);
    if (isFinalJobEvent(f)) {
      g.done = true;
      this._call(g, "onEnd", g.group);
      return true;
    }
    return false;
  }

  _call(g, name, arg) {
    const fn = g.handlers && g.handlers[name];
    if (typeof fn === "function") this._safe(() => fn.call(g.handlers, arg));
  }

  _safe(fn) {
    try { fn(); } catch (err) { console.error("taskstream: handler failed:", err); }
  }

  _setStatus(state, transport, reason = "") {
    const s = this._status;
    if (s.state === state && s.transport === transport && s.reason === reason) return;
    this._status = {state, transport, reason};
    for (const fn of [...this._listeners]) this._safe(() => fn(this.status));
  }

  _delay(attempt) {
    const d = Math.min(this._maxDelay, this._minDelay * 2 ** Math.min(attempt, 20));
    return Math.round(d * (0.5 + Math.random())); // ±50%
  }

  _networkLost() {
    if (this._closed) return;
    this._setStatus("offline", this._status.transport, "the browser is offline");
  }

  _networkBack() {
    if (this._closed) return;
    if (this._status.transport === "websocket") {
      if (!this._wsOpen && !this._stopped) {
        clearTimeout(this._timer);
        this._attempt = 0;
        this._connect();
      } else if (this._wsOpen) {
        this._setStatus("connected", "websocket");
      }
      return;
    }
    for (const g of this._groups.values()) {
      if (g.slot && !g.done && !g.es && !g.abort) {
        clearTimeout(g.timer);
        g.timer = null;
        g.attempt = 0;
        this._startHTTP(g);
      }
    }
    this._updateHTTPStatus();
  }

  // ---- WebSocket ---------------------------------------------------------

  _connect() {
    if (this._closed) return;
    this._timer = null;
    this._setStatus(this._everOpened ? "reconnecting" : "connecting", "websocket");
    let ws;
    try {
      ws = new this._WS(this._wsURL, [SUBPROTOCOL_V2]);
    } catch (err) {
      this._socketLost(null, {code: 1006, reason: String(err && err.message || err)});
      return;
    }
    this._ws = ws;
    const epochs = new Map(); // this socket's last epoch per group (lean frames leave it out)
    ws.onopen = () => {
      this._wsOpen = true;
      this._everOpened = true;
      this._attempt = 0;
      this._failuresBeforeOpen = 0;
      this._lastRx = Date.now();
      this._pingAt = 0;
      this._refs.clear();
      this._setStatus("connected", "websocket");
      for (const g of this._groups.values()) if (!g.done) this._sendSubscribe(g);
      clearInterval(this._heartbeat);
      this._heartbeat = setInterval(() => this._checkAlive(ws), 10000);
    };
    ws.onmessage = (m) => {
      this._lastRx = Date.now();
      for (const f of decodeFrames(m.data, epochs)) {
        if (ws !== this._ws) return; // a handler replaced or closed the socket
        this._onFrame(f);
      }
    };
    ws.onerror = () => { /* onclose follows with the code */ };
    ws.onclose = (ev) => this._socketLost(ws, ev);
  }

  // _checkAlive pings a quiet socket and drops one that stays silent: a
  // half-open TCP connection would otherwise look connected for minutes.
  // Timers of background tabs may run once a minute, so only an unanswered
  // ping counts, never mere quiet.
  _checkAlive(ws) {
    if (ws !== this._ws || !this._wsOpen) return;
    const now = Date.now();
    if (this._pingAt && this._lastRx < this._pingAt) {
      if (now - this._pingAt > 15000) this._socketLost(ws, {code: 1006, reason: "no answer to a ping"});
      return;
    }
    this._pingAt = 0;
    if (now - this._lastRx > 20000 && this._send({op: "ping", ref: "hb"})) this._pingAt = now;
  }

  _onFrame(f) {
    if (f.type !== "event" && f.type !== "subscribed" && this._settle(f)) return;
    switch (f.type) {
      case "event":
        if (this._handleEvent(f)) this._send({op: "unsubscribe", group: f.group});
        break;
      case "subscribed":
        if (f.ref != null) this._refs.delete(String(f.ref));
        this._handleSubscribed(f);
        break;
      case "error": {
        // An error that names a group ends it on this socket: the answer
        // to its subscribe (with the subscribe's ref), or later, without a
        // ref, when the server can no longer serve it (docs/protocol.md).
        let group = f.group;
        if (f.ref != null) {
          group = this._refs.get(String(f.ref));
          if (group === undefined) break;
          this._refs.delete(String(f.ref));
        }
        if (!group) break;
        const g = this._groups.get(group);
        if (!g) break;
        const err = {group, code: f.code, message: f.message};
        if (!TRANSIENT.has(f.code)) this._groups.delete(group);
        this._call(g, "onError", err);
        break;
      }
      default: // pong, unsubscribed, published without a pending request
    }
  }

  _send(frame) {
    if (!this._ws || !this._wsOpen) return false;
    try {
      this._ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  _sendSubscribe(g) {
    const ref = String(++this._ref);
    this._refs.set(ref, g.group);
    const frame = {op: "subscribe", group: g.group, ref};
    if (g.seq > 0 || g.epoch) {
      frame.after = g.seq;
      if (g.epoch) frame.epoch = g.epoch;
    }
    this._send(frame);
  }

  _detach(ws) {
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
  }

  _socketLost(ws, ev) {
    if (this._closed || (ws && ws !== this._ws)) return;
    if (ws) {
      this._detach(ws);
      try { ws.close(); } catch { /* closing anyway */ }
    }
    const wasOpen = this._wsOpen;
    this._ws = null;
    this._wsOpen = false;
    clearInterval(this._heartbeat);
    this._failRequests("the connection dropped before the server answered");
    const code = ev && ev.code;
    if (code === 1008 || code === 1000) {
      // 1008: refused (bad Origin, signed out); 1000: the server is done
      // with us. Either way, trying again would get the same answer.
      this._stopped = true;
      const why = (ev && ev.reason) || (code === 1008 ? "refused by the server" : "closed by the server");
      this._setStatus("offline", "websocket", why);
      return;
    }
    if (!wasOpen && !this._everOpened) {
      this._failuresBeforeOpen++;
      if (this._failuresBeforeOpen >= this._maxSocketFailures) {
        this._useTransport("sse", "the socket could not connect");
        return;
      }
    }
    const delay = wasOpen ? this._delay(0) : this._delay(++this._attempt);
    const offline = typeof navigator !== "undefined" && navigator.onLine === false;
    this._setStatus(offline ? "offline" : this._everOpened ? "reconnecting" : "connecting", "websocket",
      offline ? "the browser is offline" : "");
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._connect(), delay);
  }

  // ---- HTTP fallbacks: SSE, then long-poll ------------------------------

  _useTransport(transport, reason) {
    if (transport === "sse" && typeof this._ES !== "function") {
      transport = "longpoll";
      reason = "neither WebSocket nor EventSource is available";
    }
    this._setStatus("connecting", transport, reason);
    for (const g of this._groups.values()) {
      this._stopHTTP(g);
      g.slot = g.queued = false;
    }
    for (const g of this._groups.values()) this._startHTTP(g);
    this._updateHTTPStatus();
  }

  _eventsURL(g, extra = "") {
    let q = "";
    if (g.seq > 0 || g.epoch) {
      q = "after=" + g.seq;
      if (g.epoch) q += "&epoch=" + encodeURIComponent(g.epoch);
    }
    if (extra) q += (q ? "&" : "") + extra;
    return this._base + "/api/groups/" + encodeURIComponent(g.group) + "/events" + (q ? "?" + q : "");
  }

  // A browser opens at most 6 HTTP/1.1 connections to one server, and the
  // page needs some for its own requests: at most maxStreams groups hold a
  // stream (SSE or a waiting long-poll) at once. The others are "queued":
  // they poll without waiting every 1-3 s until a stream ends and they get
  // its slot. (HTTP/2 has no such limit, but a page cannot tell which one
  // it got.)
  _startHTTP(g) {
    if (this._closed || g.done || this._groups.get(g.group) !== g) return;
    if (!g.slot) {
      let used = 0;
      for (const o of this._groups.values()) if (o.slot) used++;
      if (used >= this._maxStreams) {
        if (!g.queued) {
          g.queued = true;
          this._poll(g, true);
        }
        return;
      }
      this._stopHTTP(g); // a queued group's poll, if any
      g.slot = true;
      g.queued = false;
    }
    if (this._status.transport === "sse") this._startSSE(g);
    else this._poll(g);
  }

  _schedulePeek(g) {
    clearTimeout(g.timer);
    g.timer = setTimeout(() => {
      g.timer = null;
      if (g.queued) this._poll(g, true);
    }, this._delay(3));
  }

  // _release ends g's stream for good and gives its slot to a waiting group.
  _release(g) {
    this._stopHTTP(g);
    g.queued = false;
    if (!g.slot) return;
    g.slot = false;
    for (const o of this._groups.values()) {
      if (o.queued) {
        this._startHTTP(o);
        break;
      }
    }
  }

  _stopHTTP(g) {
    clearTimeout(g.timer);
    g.timer = null;
    if (g.es) { g.es.close(); g.es = null; }
    if (g.abort) { g.abort.abort(); g.abort = null; }
    g.open = false;
  }

  _retryHTTP(g) {
    if (this._closed || g.done || !this._groups.has(g.group)) return;
    g.open = false;
    clearTimeout(g.timer);
    g.timer = setTimeout(() => { g.timer = null; this._startHTTP(g); }, this._delay(g.attempt++));
    this._updateHTTPStatus();
  }

  _updateHTTPStatus() {
    const t = this._status.transport;
    if (this._closed || t === "websocket") return;
    if (typeof navigator !== "undefined" && navigator.onLine === false) {
      this._setStatus("offline", t, "the browser is offline");
      return;
    }
    let waiting = false;
    let opening = false;
    for (const g of this._groups.values()) {
      if (g.done || !g.slot) continue;
      if (g.timer) waiting = true;
      else if (!g.open) opening = true;
    }
    const ever = t === "sse" ? this._sseEverOpened : true;
    if (waiting) this._setStatus(ever ? "reconnecting" : "connecting", t, this._status.reason);
    else if (opening && !ever) this._setStatus("connecting", t, this._status.reason);
    else this._setStatus("connected", t);
  }

  _startSSE(g) {
    const es = new this._ES(this._eventsURL(g), {withCredentials: this._crossOrigin});
    g.es = es;
    let opened = false;
    const mine = () => g.es === es;
    const onData = (m) => {
      if (!mine()) return;
      let f;
      try { f = JSON.parse(m.data); } catch { return; }
      if (this._handleEvent(f)) {
        // The server ends a job's stream after its final event; do not let
        // EventSource reconnect.
        this._release(g);
        this._updateHTTPStatus();
      }
    };
    es.onopen = () => {
      if (!mine()) return;
      opened = true;
      g.open = true;
      g.attempt = 0;
      this._sseFailures = 0;
      this._sseEverOpened = true;
      this._updateHTTPStatus();
    };
    es.addEventListener("subscribed", (m) => {
      if (!mine()) return;
      try { this._handleSubscribed(JSON.parse(m.data)); } catch { /* ignore a bad frame */ }
    });
    for (const name of this._eventNames) es.addEventListener(name, onData);
    es.onmessage = onData; // events without a name
    es.onerror = () => {
      if (!mine()) return;
      // Reopen by ourselves with after + epoch: EventSource's own retry
      // would only send Last-Event-ID and lose the epoch.
      es.close();
      g.es = null;
      if (g.done) return;
      if (!opened && !this._sseEverOpened && ++this._sseFailures >= this._maxSocketFailures) {
        this._useTransport("longpoll", "Server-Sent Events could not connect");
        return;
      }
      this._retryHTTP(g);
    };
    this._updateHTTPStatus();
  }

  // _poll asks for g's events once, waiting up to wait seconds for them,
  // and loops; a queued group (peek) does not wait and asks again later.
  async _poll(g, peek = false) {
    if (this._closed || g.done) return;
    const ctl = new AbortController();
    g.abort = ctl;
    let res;
    let body;
    try {
      res = await fetch(this._eventsURL(g, "wait=" + (peek ? 0 : this._wait)), {
        headers: {Accept: "application/json"}, cache: "no-store", signal: ctl.signal,
        credentials: this._crossOrigin ? "include" : "same-origin",
      });
      body = await res.json().catch(() => null);
    } catch {
      if (g.abort !== ctl) return; // stopped on purpose
      g.abort = null;
      if (peek) this._schedulePeek(g);
      else this._retryHTTP(g);
      return;
    }
    if (g.abort !== ctl) return;
    g.abort = null;
    if (!res.ok || !body) {
      const code = body && body.error ? body.error.code : "";
      if (res.status >= 400 && res.status < 500 && res.status !== 429 && res.status !== 408) {
        this._groups.delete(g.group);
        this._release(g);
        this._call(g, "onError", {group: g.group, code: code || "http_" + res.status,
          message: body && body.error ? body.error.message : "HTTP " + res.status});
        this._updateHTTPStatus();
        return;
      }
      if (peek) this._schedulePeek(g);
      else this._retryHTTP(g);
      return;
    }
    if (!peek) {
      g.open = true;
      g.attempt = 0;
    }
    if (body.recovered === false) this._reset(g, body.epoch || "", body.last_seq, "history lost");
    else if (body.epoch && g.epoch && body.epoch !== g.epoch) this._reset(g, body.epoch, body.last_seq, "epoch changed");
    else if (body.epoch && !g.epoch) g.epoch = body.epoch;
    for (const f of body.events || []) {
      if (this._handleEvent(f)) break;
    }
    if (g.done) this._release(g);
    this._updateHTTPStatus();
    if (g.done || this._groups.get(g.group) !== g) return;
    if (peek) {
      if (g.queued) this._schedulePeek(g);
    } else {
      this._poll(g);
    }
  }
}

export default TaskStream;
