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
 * status: data-state is connected | reconnecting | offline.
 */
export function showConnection(ts, el) {
  return ts.onStatus(({state, transport, reason}) => {
    el.dataset.state = state === "connecting" ? "reconnecting" : state;
    el.dataset.transport = transport;
    // Reads "connected (websocket)"; narrow screens hide the transport.
    const t = document.createElement("span");
    t.className = "conn-transport";
    t.textContent = ` (${transport})`;
    const label = document.createElement("span");
    label.append(STATE_LABEL[state] || state, t);
    if (state === "offline" && reason) label.append(`: ${reason}`);
    el.replaceChildren(label);
    el.title = reason || "";
  });
}

// ---- toasts -------------------------------------------------------------------

const TOAST_MS = 8000;
const MAX_TOASTS = 4;

function toastRegion() {
  let region = document.getElementById("toasts");
  if (!region) {
    region = document.createElement("section");
    region.id = "toasts";
    region.className = "toasts";
    region.setAttribute("aria-label", "Notifications");
    document.body.append(region);
  }
  return region;
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

  let timer = null;
  const dismiss = () => {
    clearTimeout(timer);
    el.remove();
  };
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(dismiss, TOAST_MS);
  };
  close.addEventListener("click", dismiss);
  el.addEventListener("mouseenter", () => clearTimeout(timer));
  el.addEventListener("mouseleave", arm);
  el.addEventListener("focusin", () => clearTimeout(timer));
  el.addEventListener("focusout", (e) => { if (!el.contains(e.relatedTarget)) arm(); });
  el.addEventListener("keydown", (e) => { if (e.key === "Escape") dismiss(); });
  if (href) el.querySelector(".toast-link").addEventListener("click", () => setTimeout(dismiss, 0));

  region.append(el);
  while (region.children.length > MAX_TOASTS) region.firstElementChild.remove();
  arm();
  return el;
}

/**
 * watchNotifications subscribes to the caller's user group and shows each
 * notification that arrives after the page loaded as a toast. The group's
 * history (replayed first on subscribing) is skipped: the `subscribed`
 * answer gives the last seq it holds. Transports without that answer
 * (long-poll) compare the event's time with the page's load instead.
 */
export async function watchNotifications(ts) {
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
      if (f.event !== "notification" || !f.data || typeof f.data !== "object") return;
      if (historyEnd !== null ? f.seq <= historyEnd : Date.parse(f.ts) < loadedAt) return;
      toast(f.data);
    },
    onError(err) {
      console.warn("taskstream: notifications are off:", err.message);
    },
  });
  return group;
}
