// The dashboard's entry point: hash router (#/, #/device/<id>, #/rollout/<id>), the first load
// from the API, and live updates over Server-Sent Events (/api/stream: device, rollout, summary).

import { DeviceView } from "./device.js";
import { DeviceTable, renderCounts, renderModels, renderRollouts } from "./fleet.js";
import { RolloutView } from "./rollout.js";
import { api, clearError, el, initErrorBox, reportFailure, setServerNow, setText } from "./util.js";

const MAX_RETRY_MS = 30000;
const RESYNC_MIN_MS = 15000;

const devices = new Map(); // id → latest device JSON
const rollouts = new Map(); // id → latest rollout status
let table;
let deviceView;
let rolloutView;
let current = "fleet";
let fleetScroll = 0;
let lastResync = 0;
let mismatches = 0;

// ---------------------------------------------------------------- data

function newer(a, b) {
  return a && b && typeof a.last_seen === "number" && typeof b.last_seen === "number" && a.last_seen > b.last_seen;
}

async function loadDevices() {
  lastResync = Date.now();
  const doc = await api("/api/devices");
  const list = Array.isArray(doc.devices) ? doc.devices.filter((d) => d && typeof d.device === "string") : [];
  // Stream events that arrived while the list was on its way may be newer than the list.
  const merged = list.map((d) => (newer(devices.get(d.device), d) ? devices.get(d.device) : d));
  devices.clear();
  for (const d of merged) devices.set(d.device, d);
  table.setAll(merged);
}

async function loadRollouts() {
  const doc = await api("/api/rollouts");
  for (const r of Array.isArray(doc.rollouts) ? doc.rollouts.slice(0, 200) : []) if (r && r.id) rollouts.set(r.id, r);
  renderRollouts(rollouts);
}

async function loadSummary() {
  applySummary(await api("/api/summary"));
}

function applySummary(s) {
  if (!s || typeof s !== "object") return;
  setServerNow(s.ts);
  if (s.fleet) setText(document.getElementById("fleet-name"), `fleet ${String(s.fleet).slice(0, 64)}`);
  const counts = s.devices && typeof s.devices === "object" ? s.devices : {};
  renderCounts(counts);
  renderModels(Array.isArray(s.models) ? s.models : []);
  for (const r of Array.isArray(s.rollouts) ? s.rollouts : []) if (r && r.id) rollouts.set(r.id, r);
  renderRollouts(rollouts);
  checkTable(counts);
}

/** The table missed something (e.g. a device marked offline by timeout) when its counts differ
 * from the server's twice in a row: load the device list again (at most every 15 s). */
function checkTable(counts) {
  const mine = table.counts();
  const differs = ["online", "offline", "degraded"].some((k) => typeof counts[k] === "number" && counts[k] !== mine[k]);
  mismatches = differs ? mismatches + 1 : 0;
  if (mismatches >= 2 && Date.now() - lastResync > RESYNC_MIN_MS) {
    mismatches = 0;
    loadDevices().catch(reportFailure);
  }
}

function resync() {
  Promise.all([loadDevices(), loadSummary(), loadRollouts()]).catch(reportFailure);
}

// ---------------------------------------------------------------- live stream

function setLive(state) {
  const node = document.getElementById("live");
  node.dataset.state = state;
  setText(node, state);
}

function parse(ev) {
  try {
    const doc = JSON.parse(ev.data);
    return doc && typeof doc === "object" ? doc : null;
  } catch (err) {
    return null;
  }
}

function connect() {
  let retry = 1000;
  let dropped = false;
  const open = () => {
    const es = new EventSource("/api/stream");
    es.addEventListener("open", () => {
      setLive("live");
      retry = 1000;
      if (dropped) resync(); // catch up on what happened while disconnected
      dropped = false;
    });
    es.addEventListener("error", () => {
      setLive("reconnecting");
      dropped = true;
      if (es.readyState === EventSource.CLOSED) { // refused (e.g. 503): retry ourselves
        es.close();
        setTimeout(open, retry);
        retry = Math.min(retry * 2, MAX_RETRY_MS);
      }
    });
    es.addEventListener("device", (ev) => {
      const d = parse(ev);
      if (!d || typeof d.device !== "string") return;
      devices.set(d.device, d);
      table.queue(d);
      deviceView.onDevice(d);
    });
    es.addEventListener("rollout", (ev) => {
      const r = parse(ev);
      if (!r || !r.id) return;
      rollouts.set(r.id, r);
      renderRollouts(rollouts);
      rolloutView.onRollout(r);
    });
    es.addEventListener("summary", (ev) => applySummary(parse(ev)));
  };
  open();
}

// ---------------------------------------------------------------- router

function show(view) {
  for (const section of document.querySelectorAll("main > .view")) section.hidden = section.id !== `view-${view}`;
  const crumbs = document.getElementById("crumbs");
  crumbs.replaceChildren(...(view === "fleet" ? [] : [el("a", { href: "#/" }, "← all devices")]));
}

function route() {
  const hash = location.hash || "#/";
  if (current === "fleet") fleetScroll = window.scrollY;
  deviceView.close();
  rolloutView.close();
  clearError();
  let m;
  let id = null;
  try {
    m = hash.match(/^#\/(device|rollout)\/([^/]+)$/);
    id = m ? decodeURIComponent(m[2]) : null;
  } catch (err) {
    m = null;
  }
  if (m && m[1] === "device") {
    current = "device";
    show("device");
    deviceView.open(id, devices.get(id));
    window.scrollTo(0, 0);
  } else if (m && m[1] === "rollout") {
    current = "rollout";
    show("rollout");
    rolloutView.open(id, rollouts.get(id));
    window.scrollTo(0, 0);
  } else if (hash === "#/" || hash === "#") {
    current = "fleet";
    show("fleet");
    document.title = "Edge Agent fleet";
    window.scrollTo(0, fleetScroll);
  } else {
    current = "missing";
    show("missing");
  }
}

function start() {
  initErrorBox();
  table = new DeviceTable();
  deviceView = new DeviceView();
  rolloutView = new RolloutView();
  window.addEventListener("hashchange", route);
  route();
  connect();
  resync();
  setInterval(() => {
    if (document.hidden) return;
    table.tickAges();
    deviceView.tickAges();
  }, 1000);
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
