// Shared by every taskstream page: HTTP calls, who the caller is, the
// connection indicator, and notifications shown as toasts. Every string
// that comes from the server is rendered with textContent, never as HTML.

const STATE_LABEL = {
  connecting: "connecting", connected: "connected", reconnecting: "reconnecting", offline: "offline",
};

/**
 * api calls the JSON API and never throws: {ok, status, data} or
 * {ok: false, status, error: {code, message}, retryAfter}.
 */
export async function api(method, path, body) {
  const init = {method, headers: {Accept: "application/json"}};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    return {ok: false, status: 0, error: {code: "network", message: "The server cannot be reached."}};
  }
  let data = null;
  try { data = await res.json(); } catch { /* not JSON, or no body */ }
  if (res.ok) return {ok: true, status: res.status, data};
  const error = data && data.error && typeof data.error.message === "string"
    ? data.error : {code: "http_" + res.status, message: `The server answered ${res.status} ${res.statusText}.`};
  const retry = Number(res.headers.get("Retry-After"));
  return {ok: false, status: res.status, error, retryAfter: retry > 0 ? retry : undefined};
}

let mePromise = null;

/** me returns the caller ({id, name, email, guest}), asked once per page. */
export function me() {
  if (!mePromise) {
    mePromise = api("GET", "/api/me").then((r) => {
      if (!r.ok || !r.data || typeof r.data.id !== "string") {
        mePromise = null; // ask again next time
        throw new Error(r.error ? r.error.message : "no answer from /api/me");
      }
      return r.data;
    });
  }
  return mePromise;
}

/** setMe replaces the cached caller after a change (a new name). */
export function setMe(user) {
  mePromise = Promise.resolve(user);
}

/**
 * showConnection keeps el (the page's #conn) in step with the client's
 * status: data-state is connected | reconnecting | offline. Once the page
 * has been connected, a lost connection also says for how long it has been
 * lost ("reconnecting · offline 12 s"), counted every second.
 */
export function showConnection(ts, el) {
  let status = ts.status;
  let render = () => {};
  const off = watchOnline(ts, (online, since) => {
    clearInterval(render.timer);
    render = () => {
      const {state, transport, reason} = status;
      el.dataset.state = state === "connecting" ? "reconnecting" : state;
      el.dataset.transport = transport;
      // Reads "connected (websocket)"; narrow screens hide the transport.
      const t = document.createElement("span");
      t.className = "conn-transport";
      t.textContent = ` (${transport})`;
      const label = document.createElement("span");
      label.append(STATE_LABEL[state] || state, t);
      if (state === "offline" && reason) label.append(`: ${reason}`);
      if (!online && since) {
        const lost = document.createElement("span");
        lost.className = "conn-for";
        lost.textContent = ` · offline ${fmtDuration(Math.floor((Date.now() - since) / 1000))}`;
        label.append(lost);
        el.dataset.offlineSince = String(since);
      } else {
        delete el.dataset.offlineSince;
      }
      el.replaceChildren(label);
      el.title = reason || "";
    };
    if (!online && since) render.timer = setInterval(() => render(), 1000);
  });
  const offStatus = ts.onStatus((s) => { status = s; render(); });
  return () => { off(); offStatus(); clearInterval(render.timer); };
}

/**
 * watchOnline calls fn(online, since) now and whenever the connection is
 * gained or lost. since is when it was lost (ms), or 0 while the page has
 * never been connected: a page that is still connecting has lost nothing.
 */
export function watchOnline(ts, fn) {
  let online = null;
  let ever = false;
  return ts.onStatus(({state}) => {
    const now = state === "connected";
    if (now === online) return;
    online = now;
    if (now) ever = true;
    fn(now, !now && ever ? Date.now() : 0);
  });
}

// ---- formatting ------------------------------------------------------------

const numberFormat = new Intl.NumberFormat(undefined, {maximumFractionDigits: 2});

/** fmtNum formats a number for people: grouped, at most 2 decimals (fewer for large ones). */
export function fmtNum(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "";
  if (Math.abs(n) >= 100 && !Number.isInteger(n)) return Math.round(n).toLocaleString();
  if (Math.abs(n) >= 10 && !Number.isInteger(n)) return n.toLocaleString(undefined, {maximumFractionDigits: 1});
  return numberFormat.format(n);
}

/** fmtDuration formats seconds as "42 s", "3 min 5 s", "2 h 10 min" ("0.4 s" below 10 s). */
export function fmtDuration(secs) {
  if (typeof secs !== "number" || !Number.isFinite(secs) || secs < 0) return "";
  if (secs < 10 && !Number.isInteger(secs)) return `${(Math.round(secs * 10) / 10).toLocaleString()} s`;
  const s = Math.round(secs);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** fmtBytes formats a size: "812 B", "1.4 MB". */
export function fmtBytes(n) {
  if (typeof n !== "number" || !Number.isFinite(n) || n < 0) return "";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return `${v.toLocaleString(undefined, {maximumFractionDigits: i === 0 ? 0 : 1})} ${units[i]}`;
}

/** fmtAgo says how long ago the time t (ms) was: "just now", "12 s ago", "3 min ago". */
export function fmtAgo(t, now = Date.now()) {
  const secs = Math.max(0, (now - t) / 1000);
  if (secs < 5) return "just now";
  if (secs < 60) return `${Math.floor(secs)} s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ago`;
  return `${Math.floor(secs / 86400)} d ago`;
}

const absoluteFormat = new Intl.DateTimeFormat(undefined, {dateStyle: "medium", timeStyle: "medium"});

/** parseTime returns an RFC 3339 time as ms, or NaN. */
export function parseTime(s) {
  return typeof s === "string" && s ? Date.parse(s) : NaN;
}

/**
 * setTime makes el (a <time>) show t (ms) relative to now, the absolute
 * time on hover (title) and in datetime; refreshTimes keeps it current.
 * A missing time shows fallback.
 */
export function setTime(el, t, fallback = "") {
  if (!Number.isFinite(t)) {
    el.textContent = fallback;
    el.removeAttribute("datetime");
    el.removeAttribute("title");
    delete el.dataset.t;
    return;
  }
  const d = new Date(t);
  el.dateTime = d.toISOString();
  el.title = absoluteFormat.format(d);
  el.dataset.t = String(t);
  el.textContent = fmtAgo(t);
}

/** timeEl returns a new <time> for t (ms), see setTime. */
export function timeEl(t, fallback = "") {
  const el = document.createElement("time");
  setTime(el, t, fallback);
  return el;
}

// Relative times go stale: one timer for the page refreshes them.
setInterval(() => {
  const now = Date.now();
  for (const el of document.querySelectorAll("time[data-t]")) el.textContent = fmtAgo(Number(el.dataset.t), now);
}, 5000);

// ---- toasts -------------------------------------------------------------------

const TOAST_MS = 8000; // how long a toast stays while nobody looks at it
const LONGEST_TIMER_MS = 2 ** 31 - 1; // setTimeout fires at once for a longer delay
const MAX_TOASTS = 3; // a fourth pushes out the oldest
const TOAST_GAP = 12; // px kept free around what toasts avoid and the window's edges

// Toasts sit in a bottom corner (the whole bottom on a phone) and never
// cover what the page says to avoid (its header, its main button, its
// newest row...): placeToasts puts them in the free band of the window
// nearest its bottom, and shows only the newest ones that fit there. The
// others wait, paused, until scrolling frees room or a toast goes.
let avoided = () => []; // never covered
let avoidedIfRoom = () => []; // covered only when nothing else leaves room for a toast
let placing = 0; // the requested animation frame, or 0
let watcher = null; // a MutationObserver while toasts are shown
const controls = new WeakMap(); // toast element → {hold(reason, on)}

/**
 * avoidToasts tells the toasts which elements never to cover (never()
 * returns them, nulls skipped, each time the toasts are placed), and which
 * to cover only when the window has no other room for one toast (ifRoom():
 * on a phone a form can fill the whole screen).
 */
export function avoidToasts(never, ifRoom = () => []) {
  avoided = never;
  avoidedIfRoom = ifRoom;
  placeSoon();
}

function toastRegion() {
  let region = document.getElementById("toasts");
  if (!region) {
    region = document.createElement("section");
    region.id = "toasts";
    region.className = "toasts";
    region.setAttribute("aria-label", "Notifications");
    // Hovering any toast keeps them all, so the pointer can move between them.
    region.addEventListener("mouseenter", () => holdAll(region, "hover", true));
    region.addEventListener("mouseleave", () => holdAll(region, "hover", false));
    document.body.append(region);
    addEventListener("resize", placeSoon);
    document.addEventListener("scroll", placeSoon, {capture: true, passive: true});
  }
  return region;
}

function holdAll(region, reason, on) {
  for (const el of region.children) controls.get(el)?.hold(reason, on);
}

function placeSoon() {
  if (!placing) placing = requestAnimationFrame(() => { placing = 0; placeToasts(); });
}

function placeToasts() {
  const region = document.getElementById("toasts");
  if (!region) return;
  const toasts = [...region.children];
  if (toasts.length === 0) {
    watcher?.disconnect();
    watcher = null;
    return;
  }
  if (!watcher) {
    // The page changing under the toasts (a new row, a form growing) may
    // move what they avoid. Changes inside the region are their own.
    watcher = new MutationObserver((records) => {
      if (records.some((r) => !region.contains(r.target))) placeSoon();
    });
    watcher.observe(document.body, {childList: true, subtree: true, attributes: true, attributeFilter: ["hidden", "class"]});
  }
  // Measure every toast at the default place, the bottom corner.
  region.hidden = false;
  region.style.bottom = "";
  for (const el of toasts) el.hidden = false;
  const box = region.getBoundingClientRect();
  const heights = toasts.map((el) => el.getBoundingClientRect().height);
  const vh = document.documentElement.clientHeight;
  let [best, shown] = bestBand([...avoided(), ...avoidedIfRoom()], box, vh, heights);
  if (shown === 0) [best, shown] = bestBand(avoided(), box, vh, heights);
  toasts.forEach((el, i) => {
    const waits = i < toasts.length - shown;
    el.hidden = waits;
    controls.get(el)?.hold("waiting", waits);
  });
  if (!best) {
    region.hidden = true;
    return;
  }
  region.style.bottom = `${vh - best[1]}px`;
}

// bestBand returns the free band of the window (top and bottom, px) that
// holds the most of the newest toasts, the lowest of equals, and how many
// it holds: [null, 0] when none fits. box is the toasts' column.
function bestBand(elements, box, vh, heights) {
  // The bands of the window's height taken by what the toasts avoid, where
  // it is across from the toasts' column.
  const taken = elements.filter(Boolean).map((el) => el.getBoundingClientRect())
    .filter((b) => b.width > 0 && b.height > 0 && b.left < box.right + TOAST_GAP && b.right > box.left - TOAST_GAP &&
      b.bottom > 0 && b.top < vh)
    .map((b) => [b.top - TOAST_GAP, b.bottom + TOAST_GAP])
    .sort((a, b) => a[0] - b[0]);
  const free = [];
  let top = TOAST_GAP;
  for (const [from, to] of taken) {
    if (from > top) free.push([top, from]);
    top = Math.max(top, to);
  }
  if (vh - TOAST_GAP > top) free.push([top, vh - TOAST_GAP]);
  // How many of the newest fit in each band; the lowest band with the most.
  const fits = ([a, b]) => {
    let n = 0;
    let h = 0;
    for (let i = heights.length - 1; i >= 0; i--) {
      h += heights[i] + (n > 0 ? 8 : 0);
      if (h > b - a) break;
      n++;
    }
    return n;
  };
  let best = null;
  let shown = 0;
  for (const band of free) {
    const n = fits(band);
    if (n > 0 && n >= shown) {
      best = band;
      shown = n;
    }
  }
  return [best, shown];
}

/**
 * safeLink returns href as a path on this server, or "" for anything else
 * (another origin, javascript:, data: ...).
 */
export function safeLink(href) {
  if (typeof href !== "string" || !href) return "";
  let url;
  try { url = new URL(href, location.origin); } catch { return ""; }
  if (url.origin !== location.origin || (url.protocol !== "http:" && url.protocol !== "https:")) return "";
  return url.pathname + url.search + url.hash;
}

// toastMs is how long a toast stays without a hold: TOAST_MS, or longer
// when window.__toastMs says so. A browser test sets it before the page's
// own scripts run: on a slow machine TOAST_MS can pass between a toast
// showing and the test pressing its close button, and a toast gone by
// itself would pass for one closed. It only lengthens: users, for whom
// nothing sets it, keep TOAST_MS.
function toastMs() {
  const ms = Number(globalThis.__toastMs);
  return ms > TOAST_MS ? Math.min(ms, LONGEST_TIMER_MS) : TOAST_MS;
}

/**
 * toast shows {title, body, link} for about 8 s (longer while hovered or
 * focused), with a close button. Each toast is its own status region.
 */
export function toast({title, body, link} = {}) {
  const region = toastRegion();
  const el = document.createElement("div");
  el.className = "toast";
  el.setAttribute("role", "status");
  const text = document.createElement("div");
  text.className = "toast-text";
  const t = document.createElement("p");
  t.className = "toast-title";
  t.textContent = String(title || "Notification");
  text.append(t);
  if (body) {
    const b = document.createElement("p");
    b.className = "toast-body";
    b.textContent = String(body);
    text.append(b);
  }
  const href = safeLink(link);
  if (href) {
    const a = document.createElement("a");
    a.className = "toast-link";
    a.href = href;
    a.textContent = "Open";
    a.setAttribute("aria-label", "Open: " + String(title || "notification"));
    text.append(a);
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "toast-close";
  close.setAttribute("aria-label", "Dismiss notification");
  close.textContent = "×";
  el.append(text, close);

  // The toast goes after toastMs() without a hold: a pointer over the
  // toasts, focus in one, or waiting for room. A hold restarts the time.
  let timer = null;
  const holds = new Set(["new"]);
  const dismiss = () => {
    clearTimeout(timer);
    const hadFocus = el.contains(document.activeElement);
    el.remove();
    if (hadFocus) region.querySelector(".toast:not([hidden]) .toast-close")?.focus();
    placeSoon();
  };
  const hold = (reason, on) => {
    if (on === holds.has(reason)) return; // placing again must not restart the time
    if (on) holds.add(reason); else holds.delete(reason);
    clearTimeout(timer);
    timer = holds.size === 0 ? setTimeout(dismiss, toastMs()) : null;
    el.dataset.paused = String(holds.size > 0);
  };
  controls.set(el, {hold});
  close.addEventListener("click", dismiss);
  el.addEventListener("focusin", () => hold("focus", true));
  el.addEventListener("focusout", (e) => { if (!el.contains(e.relatedTarget)) hold("focus", false); });
  el.addEventListener("keydown", (e) => { if (e.key === "Escape") dismiss(); });
  if (href) el.querySelector(".toast-link").addEventListener("click", () => setTimeout(dismiss, 0));

  region.append(el);
  while (region.children.length > MAX_TOASTS) region.firstElementChild.remove();
  hold("new", false);
  if (region.matches(":hover")) hold("hover", true);
  placeToasts();
  return el;
}

/**
 * watchNotifications subscribes to the caller's user group and shows each
 * notification that arrives after the page loaded as a toast. The group's
 * history (replayed first on subscribing) is skipped: the `subscribed`
 * answer gives the last seq it holds. shown(notification), when given,
 * returns true when the page shows the news already: no toast then.
 * Transports without that answer
 * (long-poll) compare the event's time with the page's load instead.
 * onEvent(frame, {old, loadedAt}), when given, gets the group's other
 * events (a submitted job), old saying whether it was history.
 */
export async function watchNotifications(ts, {shown, onEvent} = {}) {
  let user;
  try {
    user = await me();
  } catch (err) {
    console.warn("taskstream: notifications are off:", err.message);
    return null;
  }
  const loadedAt = performance.timeOrigin || Date.now();
  let historyEnd = null; // seqs up to this one were there before the page
  let epoch = "";
  const group = "user:" + user.id;
  ts.subscribe(group, {
    onSubscribed(info) {
      if (historyEnd === null || info.recovered === false || (epoch && info.epoch !== epoch)) {
        historyEnd = Number(info.last_seq) || 0;
      }
      epoch = info.epoch || epoch;
    },
    onReset(info) {
      historyEnd = Number(info.last_seq) || 0; // the replay that follows is old news
    },
    onEvent(f) {
      const old = historyEnd !== null ? f.seq <= historyEnd : Date.parse(f.ts) < loadedAt;
      if (f.event !== "notification") {
        if (onEvent) onEvent(f, {old, loadedAt});
        return;
      }
      if (!f.data || typeof f.data !== "object" || old) return;
      if (shown && shown(f.data)) return; // the page shows it already (a job's row on screen)
      toast(f.data);
    },
    onError(err) {
      console.warn("taskstream: notifications are off:", err.message);
    },
  });
  return group;
}
