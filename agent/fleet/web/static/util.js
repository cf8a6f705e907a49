// Small helpers shared by the views. Every piece of data goes into the page with textContent
// (or an attribute value): never as HTML.

/** Server clock minus local clock in seconds, estimated from the last answer that had both. */
let clockOffset = 0;

export function setServerNow(serverTs) {
  if (typeof serverTs === "number" && Number.isFinite(serverTs)) {
    clockOffset = serverTs - Date.now() / 1000;
  }
}

export function serverNow() {
  return Date.now() / 1000 + clockOffset;
}

/** Creates an element with attributes and text (text via textContent). */
export function el(tag, attrs = null, text = null) {
  const node = document.createElement(tag);
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value !== null && value !== undefined) node.setAttribute(key, String(value));
    }
  }
  if (text !== null && text !== undefined) node.textContent = String(text);
  return node;
}

/** Sets textContent only when it changed (no needless DOM writes). */
export function setText(node, text) {
  const value = text === null || text === undefined ? "" : String(text);
  if (node.textContent !== value) node.textContent = value;
}

export const DASH = "–";

export function isNum(v) {
  return typeof v === "number" && Number.isFinite(v);
}

export function fmtNum(v, digits = 1) {
  return isNum(v) ? v.toFixed(digits) : DASH;
}

export function str(v, max = 120) {
  if (v === null || v === undefined || v === "") return DASH;
  const s = String(v);
  return s.length > max ? s.slice(0, max - 1) + "…" : s;
}

/** "12 s ago", "4 min ago", "3 h ago", "2 d ago" from a number of seconds. */
export function fmtAgoSeconds(seconds) {
  if (!isNum(seconds)) return DASH;
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** Relative time of a controller timestamp (epoch seconds). */
export function fmtAgo(ts) {
  return isNum(ts) ? fmtAgoSeconds(serverNow() - ts) : DASH;
}

/** Local clock time of an epoch-seconds timestamp, e.g. "14:03:12" (with the date if not today). */
export function fmtTime(ts) {
  if (!isNum(ts)) return DASH;
  const d = new Date(ts * 1000);
  const today = new Date();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  if (d.toDateString() === today.toDateString()) return time;
  return `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

/** "14:03:12 (12 s ago)" */
export function fmtWhen(ts) {
  return isNum(ts) ? `${fmtTime(ts)} (${fmtAgo(ts)})` : DASH;
}

export function deviceHref(id) {
  return `#/device/${encodeURIComponent(id)}`;
}

export function rolloutHref(id) {
  return `#/rollout/${encodeURIComponent(id)}`;
}

// ---------------------------------------------------------------- errors

const errorBox = () => document.getElementById("error");

/** Shows an error with its fix in #error (the API's message and fix, or our own). */
export function showError(message, fix = "") {
  const box = errorBox();
  if (!box) return;
  setText(box.querySelector('[data-part="message"]'), message);
  setText(box.querySelector('[data-part="fix"]'), fix ? `Fix: ${fix}` : "");
  box.hidden = false;
}

export function clearError() {
  const box = errorBox();
  if (box) box.hidden = true;
}

export function initErrorBox() {
  const box = errorBox();
  box.querySelector('[data-part="close"]').addEventListener("click", clearError);
}

// ---------------------------------------------------------------- API

export class ApiFailure extends Error {
  constructor(status, code, message, fix) {
    super(message);
    this.status = status;
    this.code = code;
    this.fix = fix;
  }
}

/** Fetches JSON from the controller; throws ApiFailure with the API's message and fix. */
export async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { cache: "no-store", ...options });
  } catch (err) {
    throw new ApiFailure(0, "network", "cannot reach the fleet controller",
      "check that `edge-agent fleet serve` is running and reachable");
  }
  let doc = null;
  try {
    doc = await response.json();
  } catch (err) {
    doc = null;
  }
  if (!response.ok) {
    const e = doc && typeof doc === "object" && doc.error ? doc.error : {};
    throw new ApiFailure(
      response.status,
      String(e.code || "http_" + response.status),
      String(e.message || `the controller answered ${response.status}`),
      String(e.fix || ""),
    );
  }
  if (!doc || typeof doc !== "object") {
    throw new ApiFailure(response.status, "bad_json", "the controller sent an unreadable answer",
      "check the controller's version and log");
  }
  return doc;
}

export function reportFailure(err) {
  if (err instanceof ApiFailure) showError(err.message, err.fix);
  else showError(String(err && err.message ? err.message : err), "reload the page");
}

/** Runs fn at most once per `ms` (trailing call kept). */
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      fn(...args);
    }, ms);
  };
}

/** Runs fn once, `ms` after the first call since the last run (a steady stream of calls still
 * gets one run per `ms`, unlike debounce). */
export function atMostEvery(fn, ms) {
  let timer = null;
  return () => {
    if (timer !== null) return;
    timer = setTimeout(() => {
      timer = null;
      fn();
    }, ms);
  };
}
