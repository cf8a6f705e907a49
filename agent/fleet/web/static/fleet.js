// The fleet view: summary cards and the device table (1,000+ rows, updated in place).
//
// Cost model: one <tr> per device kept in a Map; an update rewrites only the cells whose text
// changed; updates are batched into one animation frame; re-sorting after live updates is
// debounced and skipped when the order did not change; filtering toggles row.hidden.

import {
  DASH, atMostEvery, debounce, deviceHref, el, fmtAgo, fmtNum, isNum, rolloutHref, setServerNow, setText, str,
} from "./util.js";

export const FIELDS = [
  "device", "status", "board", "profile", "model", "precision", "fps", "latency_p50_ms",
  "power_w", "temp_max_c", "memory_used_pct", "governor_state", "ota_state", "last_seen",
];
const NUMERIC = new Set(["fps", "latency_p50_ms", "power_w", "temp_max_c", "memory_used_pct", "last_seen"]);
const STATUSES = new Set(["online", "offline", "degraded"]);
const DIGITS = { fps: 1, latency_p50_ms: 1, power_w: 1, temp_max_c: 0, memory_used_pct: 0 };
const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

function maxOf(values) {
  const nums = values.filter(isNum);
  return nums.length ? Math.max(...nums) : null;
}

function pick(...candidates) {
  for (const c of candidates) if (c !== undefined && c !== null) return c;
  return null;
}

/** The display fields of a device JSON (flat fields first, the nested record as fallback). */
export function normalize(d) {
  const m = (d && typeof d.metrics === "object" && d.metrics) || {};
  const model = (d && typeof d.model === "object" && d.model) || {};
  const ota = (d && typeof d.ota === "object" && d.ota) || {};
  const status = STATUSES.has(d.status) ? d.status : d.online ? "online" : "offline";
  return {
    id: typeof d.device === "string" ? d.device : null,
    status,
    board: pick(d.board),
    profile: pick(d.profile),
    model_name: pick(d.model_name, model.name),
    model_version: pick(d.model_version, model.version),
    precision: pick(d.model_precision, model.precision),
    fps: pick(d.fps, m.fps),
    latency_p50_ms: pick(d.latency_p50_ms,
      maxOf(Object.values(m.sources || {}).map((s) => s && s.latency_p50_ms))),
    power_w: pick(d.power_w, m.power_w),
    temp_max_c: pick(d.temp_max_c, maxOf(Object.values(m.temperatures_c || {}))),
    memory_used_pct: pick(d.memory_used_pct, m.memory_used_pct),
    governor_state: pick(d.governor_state, m.governor_state),
    ota_state: pick(d.ota_state, ota.state),
    last_seen: pick(d.last_seen),
    seen_ago_s: pick(d.seen_ago_s),
    group: pick(d.group),
    reasons: Array.isArray(d.status_reasons) ? d.status_reasons.slice(0, 10).map((x) => str(x, 80)).join(", ") : "",
  };
}

export function modelText(v) {
  if (v.model_name === null) return DASH;
  return v.model_version === null ? str(v.model_name, 60) : `${str(v.model_name, 60)} v${v.model_version}`;
}

function cellText(field, v) {
  if (field === "device") return v.id;
  if (field === "model") return modelText(v);
  if (field === "last_seen") return fmtAgo(v.last_seen);
  if (field in DIGITS) return fmtNum(v[field], DIGITS[field]);
  return str(v[field], 60);
}

function sortValue(field, v) {
  if (field === "device") return v.id;
  if (field === "model") return v.model_name === null ? null : modelText(v);
  const value = v[field];
  if (NUMERIC.has(field)) return isNum(value) ? value : null;
  return value === null || value === undefined ? null : String(value);
}

function makeTemplate() {
  const tr = el("tr");
  for (const field of FIELDS) {
    const td = el("td", { "data-field": field, class: NUMERIC.has(field) && field !== "last_seen" ? "num" : null });
    if (field === "device") td.append(el("a"));
    tr.append(td);
  }
  return tr;
}

export class DeviceTable {
  constructor() {
    this.table = document.getElementById("devices");
    this.tbody = this.table.tBodies[0];
    this.filterInput = document.getElementById("filter");
    this.shown = document.getElementById("shown-count");
    this.empty = document.getElementById("devices-empty");
    this.template = makeTemplate();
    this.rows = new Map();
    this.pending = new Map();
    this.flushScheduled = false;
    this.sortKey = "device";
    this.sortDir = 1;
    this.terms = [];
    this.onMismatch = null;
    this.resortSoon = atMostEvery(() => this.applyOrder(), 1000);
    this.refilter = debounce(() => this.applyFilter(), 120);
    this.filterInput.addEventListener("input", () => this.refilter());
    this.table.tHead.addEventListener("click", (ev) => this.onHeaderClick(ev));
    this.tbody.addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr[data-device-id]");
      if (tr && !ev.target.closest("a")) location.hash = deviceHref(tr.dataset.deviceId);
    });
    this.markSortHeader();
  }

  /** Replaces the table's content with the full device list (initial load, reconnect). */
  setAll(devices) {
    const seen = new Set();
    for (const d of devices) {
      const id = this.upsert(d);
      if (id !== null) seen.add(id);
    }
    for (const [id, r] of this.rows) {
      if (!seen.has(id)) {
        r.tr.remove();
        this.rows.delete(id);
      }
    }
    this.applyOrder();
    this.applyFilter();
  }

  /** Queues one device JSON from the live stream; written at the next animation frame. */
  queue(device) {
    if (!device || typeof device.device !== "string") return;
    this.pending.set(device.device, device);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    const run = () => this.flush();
    requestAnimationFrame(run);
    setTimeout(run, 250); // background tabs get no animation frames
  }

  flush() {
    if (!this.flushScheduled) return;
    this.flushScheduled = false;
    const batch = this.pending;
    this.pending = new Map();
    let reorder = false;
    for (const d of batch.values()) {
      const before = this.rows.get(d.device);
      const old = before ? before.values[this.sortKey] : undefined;
      const id = this.upsert(d);
      if (id === null) continue;
      const r = this.rows.get(id);
      if (!before || r.values[this.sortKey] !== old) reorder = true;
      const hide = !this.matches(r);
      if (r.tr.hidden !== hide) r.tr.hidden = hide;
    }
    if (reorder) this.resortSoon();
    this.updateCount();
  }

  upsert(d) {
    const v = normalize(d);
    if (v.id === null) return null;
    if (isNum(v.last_seen) && isNum(v.seen_ago_s)) setServerNow(v.last_seen + v.seen_ago_s);
    let r = this.rows.get(v.id);
    if (!r) {
      const tr = this.template.cloneNode(true);
      tr.dataset.deviceId = v.id;
      const cells = {};
      for (const td of tr.cells) cells[td.dataset.field] = td;
      cells.device.firstChild.href = deviceHref(v.id);
      r = { id: v.id, tr, cells, text: {}, values: {}, search: "", lastSeen: null, reasons: "" };
      this.rows.set(v.id, r);
      this.tbody.append(tr);
    }
    if (r.tr.dataset.status !== v.status) r.tr.dataset.status = v.status;
    if (r.reasons !== v.reasons) {
      r.reasons = v.reasons;
      r.cells.status.title = v.reasons;
    }
    for (const field of FIELDS) {
      const text = cellText(field, v);
      if (r.text[field] !== text) {
        r.text[field] = text;
        const target = field === "device" ? r.cells.device.firstChild : r.cells[field];
        target.textContent = text;
      }
      r.values[field] = sortValue(field, v);
    }
    r.lastSeen = v.last_seen;
    r.search = FIELDS.filter((f) => f !== "last_seen").map((f) => r.text[f]).join(" ").toLowerCase()
      + (v.group ? " " + String(v.group).toLowerCase() : "");
    return v.id;
  }

  compare(a, b) {
    const va = a.values[this.sortKey];
    const vb = b.values[this.sortKey];
    if (va === null && vb === null) return collator.compare(a.id, b.id);
    if (va === null) return 1; // unknown readings last in both directions
    if (vb === null) return -1;
    const c = typeof va === "number" && typeof vb === "number" ? va - vb : collator.compare(String(va), String(vb));
    return c !== 0 ? c * this.sortDir : collator.compare(a.id, b.id);
  }

  applyOrder() {
    const sorted = [...this.rows.values()].sort((a, b) => this.compare(a, b));
    const current = this.tbody.children;
    let same = current.length === sorted.length;
    for (let i = 0; same && i < sorted.length; i++) same = current[i] === sorted[i].tr;
    if (!same) {
      const frag = document.createDocumentFragment();
      for (const r of sorted) frag.append(r.tr);
      this.tbody.append(frag);
    }
    this.empty.hidden = this.rows.size > 0;
  }

  onHeaderClick(ev) {
    const th = ev.target.closest("th[data-sort]");
    if (!th) return;
    const key = th.dataset.sort;
    if (key === this.sortKey) this.sortDir = -this.sortDir;
    else {
      this.sortKey = key;
      this.sortDir = key === "last_seen" ? -1 : 1; // most recent first
    }
    this.markSortHeader();
    this.applyOrder();
  }

  markSortHeader() {
    for (const th of this.table.tHead.querySelectorAll("th[data-sort]")) {
      if (th.dataset.sort === this.sortKey) th.setAttribute("aria-sort", this.sortDir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
  }

  matches(r) {
    for (const t of this.terms) if (!r.search.includes(t)) return false;
    return true;
  }

  applyFilter() {
    this.terms = this.filterInput.value.toLowerCase().split(/\s+/).filter(Boolean);
    for (const r of this.rows.values()) {
      const hide = !this.matches(r);
      if (r.tr.hidden !== hide) r.tr.hidden = hide;
    }
    this.updateCount();
  }

  updateCount() {
    let shown = 0;
    for (const r of this.rows.values()) if (!r.tr.hidden) shown++;
    const total = this.rows.size;
    setText(this.shown, this.terms.length ? `${shown} of ${total} devices` : `${total} devices`);
    this.empty.hidden = total > 0;
  }

  /** Refreshes the "last seen" cells (relative times). */
  tickAges() {
    for (const r of this.rows.values()) {
      const text = fmtAgo(r.lastSeen);
      if (r.text.last_seen !== text) {
        r.text.last_seen = text;
        r.cells.last_seen.textContent = text;
      }
    }
  }

  /** Status counts of the rows held, for comparison with the server's summary. */
  counts() {
    const c = { online: 0, offline: 0, degraded: 0 };
    for (const r of this.rows.values()) c[r.tr.dataset.status] = (c[r.tr.dataset.status] || 0) + 1;
    return c;
  }
}

// ---------------------------------------------------------------- summary cards

export function renderCounts(devices) {
  const box = document.getElementById("summary");
  for (const key of ["total", "online", "offline", "degraded"]) {
    const node = box.querySelector(`[data-count="${key}"]`);
    setText(node, isNum(devices[key]) ? String(devices[key]) : DASH);
  }
}

export function renderModels(models) {
  const list = document.getElementById("models");
  const items = [];
  for (const m of models.slice(0, 50)) {
    const li = el("li");
    const name = m.version === null || m.version === undefined ? str(m.name, 60) : `${str(m.name, 60)} v${m.version}`;
    li.append(el("span", { class: "strong" }, name));
    if (m.precision) li.append(el("span", { class: "tag" }, str(m.precision, 16)));
    li.append(el("span", { class: "muted right" }, `${isNum(m.devices) ? m.devices : 0} devices`));
    items.push(li);
  }
  if (items.length === 0) items.push(el("li", { class: "muted" }, "No model reported yet."));
  list.replaceChildren(...items);
}

const ACTIVE = new Set(["planned", "running", "paused"]);

/** The rollouts card: active ones first, then the most recent finished ones. */
export function renderRollouts(rollouts) {
  const list = document.getElementById("rollouts");
  const all = [...rollouts.values()].sort((a, b) => {
    const act = Number(ACTIVE.has(b.state)) - Number(ACTIVE.has(a.state));
    return act !== 0 ? act : (b.created_at || 0) - (a.created_at || 0);
  });
  const items = [];
  for (const r of all.slice(0, 8)) {
    const li = el("li");
    const a = el("a", { href: rolloutHref(r.id) }, `${str(r.model, 60)} v${r.version ?? "?"}`);
    li.append(a, el("span", { class: "badge", "data-state": r.state }, str(r.state, 20)));
    const c = r.counts || {};
    const total = Object.values(c).filter(isNum).reduce((x, y) => x + y, 0);
    li.append(el("span", { class: "muted right" }, `${c.active ?? 0}/${total} active`));
    items.push(li);
  }
  if (items.length === 0) items.push(el("li", { class: "muted" }, "No rollouts."));
  list.replaceChildren(...items);
}
