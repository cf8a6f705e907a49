// The device view: header facts (live from the stream), five charts of the last hour from the
// stored history, the device's events and its OTA history.

import { attachHover, drawChart } from "./chart.js";
import { modelText, normalize } from "./fleet.js";
import {
  DASH, api, atMostEvery, debounce, el, fmtAgo, fmtNum, fmtTime, fmtWhen, isNum, reportFailure,
  serverNow, setText, str,
} from "./util.js";

const WINDOW_S = 3600;
const HISTORY_REFRESH_MS = 15000;

const FACTS = [
  ["status", "Status"], ["group", "Group"], ["board", "Board"], ["profile", "Profile"],
  ["model", "Model"], ["precision", "Precision"], ["agent", "Agent"], ["fps", "FPS"],
  ["latency", "Latency p50"], ["power", "Board power"], ["temp", "Hottest temperature"],
  ["memory", "Memory used"], ["gpu", "GPU load"], ["governor", "Governor"], ["sources", "Sources"],
  ["ota", "OTA"], ["last_seen", "Last seen"], ["offline_reason", "Offline reason"],
];

function sourcesText(metrics) {
  const sources = metrics && typeof metrics.sources === "object" && metrics.sources ? metrics.sources : {};
  const parts = Object.entries(sources).slice(0, 8).map(([name, s]) => {
    const fps = s && isNum(s.fps) ? ` ${s.fps.toFixed(1)} fps` : "";
    return `${str(name, 40)}: ${str(s && s.state, 20)}${fps}`;
  });
  return parts.length ? parts.join(" · ") : DASH;
}

function factValues(d) {
  const v = normalize(d);
  const m = (d && d.metrics) || {};
  const ota = (d && d.ota) || null;
  const otaText = ota ? [ota.state, ota.reason, ota.version !== null && ota.version !== undefined ? `v${ota.version}` : null]
    .filter((x) => x !== null && x !== undefined && x !== "").map((x) => str(x, 60)).join(" · ") : str(v.ota_state);
  return {
    status: v.reasons ? `${v.status} (${v.reasons})` : v.status, group: str(v.group), board: str(v.board), profile: str(v.profile),
    model: modelText(v), precision: str(v.precision), agent: str(d.agent_version),
    fps: fmtNum(v.fps, 1), latency: isNum(v.latency_p50_ms) ? `${v.latency_p50_ms.toFixed(1)} ms` : DASH,
    power: isNum(v.power_w) ? `${v.power_w.toFixed(1)} W` : DASH,
    temp: isNum(v.temp_max_c) ? `${v.temp_max_c.toFixed(1)} °C` : DASH,
    memory: isNum(v.memory_used_pct) ? `${v.memory_used_pct.toFixed(0)} %` : DASH,
    gpu: isNum(m.gpu_load_pct) ? `${m.gpu_load_pct.toFixed(0)} %` : DASH,
    governor: str(v.governor_state), sources: sourcesText(m), ota: otaText || DASH,
    last_seen: fmtWhen(v.last_seen), offline_reason: str(d.offline_reason),
  };
}

export class DeviceView {
  constructor() {
    this.id = null;
    this.generation = 0;
    this.device = null;
    this.points = [];
    this.timer = null;
    this.title = document.getElementById("device-title");
    this.badge = document.getElementById("device-status");
    this.canvases = [...document.querySelectorAll("#view-device canvas[data-chart]")];
    this.canvases.forEach(attachHover);
    this.dd = {};
    const dl = document.getElementById("device-facts");
    for (const [key, label] of FACTS) {
      const dd = el("dd", { "data-fact": key });
      dl.append(el("div", { class: "fact" }));
      dl.lastChild.append(el("dt", null, label), dd);
      this.dd[key] = dd;
    }
    this.reloadEvents = atMostEvery(() => this.loadEvents(this.generation), 1000);
    this.reloadOta = atMostEvery(() => this.loadOta(this.generation), 1000);
    window.addEventListener("resize", debounce(() => this.drawCharts(), 150));
  }

  open(id, cached) {
    this.close();
    this.id = id;
    const gen = ++this.generation;
    setText(this.title, id);
    document.title = `${id} · Edge Agent fleet`;
    this.device = null;
    this.points = [];
    this.drawCharts();
    document.querySelector("#events tbody").replaceChildren();
    document.querySelector("#ota-history tbody").replaceChildren();
    if (cached) this.render(cached);
    api(`/api/devices/${encodeURIComponent(id)}`)
      .then((d) => { if (gen === this.generation) this.render(d); })
      .catch(reportFailure);
    this.loadHistory(gen);
    this.loadEvents(gen);
    this.loadOta(gen);
    this.timer = setInterval(() => this.loadHistory(gen), HISTORY_REFRESH_MS);
  }

  close() {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.id = null;
    this.generation++;
  }

  /** A device JSON from the stream: refresh the header, and the tables when they changed. */
  onDevice(d) {
    if (this.id === null || !d || d.device !== this.id) return;
    const before = this.device;
    this.render(d);
    if (!before || before.last_event_ts !== d.last_event_ts) this.reloadEvents();
    const otaKey = (x) => (x && x.ota ? `${x.ota.id}/${x.ota.state}/${x.ota.steps}` : String(x && x.ota_state));
    if (!before || otaKey(before) !== otaKey(d)) this.reloadOta();
  }

  render(d) {
    this.device = d;
    const facts = factValues(d);
    for (const [key] of FACTS) setText(this.dd[key], facts[key]);
    const status = normalize(d).status;
    setText(this.badge, status);
    this.badge.dataset.state = status;
  }

  tickAges() {
    if (this.device) setText(this.dd.last_seen, fmtWhen(this.device.last_seen));
  }

  async loadHistory(gen) {
    try {
      const doc = await api(`/api/devices/${encodeURIComponent(this.id)}/history?seconds=${WINDOW_S}`);
      if (gen !== this.generation) return;
      this.points = Array.isArray(doc.points) ? doc.points.filter((p) => p && isNum(p.ts)) : [];
      this.drawCharts();
    } catch (err) {
      if (gen === this.generation) reportFailure(err);
    }
  }

  drawCharts() {
    const last = this.points.length ? this.points[this.points.length - 1].ts : 0;
    const end = Math.max(serverNow(), last);
    for (const canvas of this.canvases) drawChart(canvas, this.points, canvas.dataset.chart, end - WINDOW_S, end);
  }

  async loadEvents(gen) {
    if (this.id === null) return;
    try {
      const doc = await api(`/api/devices/${encodeURIComponent(this.id)}/events?limit=100`);
      if (gen !== this.generation) return;
      const rows = (Array.isArray(doc.events) ? doc.events : []).slice(0, 100).map((e) => {
        let data = "";
        try { data = e.data === undefined || e.data === null ? "" : JSON.stringify(e.data); } catch (err) { data = "?"; }
        const tr = el("tr");
        tr.append(el("td", { title: fmtAgo(e.ts) }, fmtTime(e.ts)), el("td", null, str(e.kind, 60)),
          el("td", { class: "data", title: str(data, 2000) }, str(data, 240)));
        return tr;
      });
      if (rows.length === 0) rows.push(emptyRow(3, "No events stored."));
      document.querySelector("#events tbody").replaceChildren(...rows);
    } catch (err) {
      if (gen === this.generation) reportFailure(err);
    }
  }

  async loadOta(gen) {
    if (this.id === null) return;
    try {
      const doc = await api(`/api/devices/${encodeURIComponent(this.id)}/ota`);
      if (gen !== this.generation) return;
      const rows = (Array.isArray(doc.updates) ? doc.updates : []).slice(0, 50).map(otaRow);
      if (rows.length === 0) rows.push(emptyRow(6, "No OTA updates."));
      document.querySelector("#ota-history tbody").replaceChildren(...rows);
    } catch (err) {
      if (gen === this.generation) reportFailure(err);
    }
  }
}

function otaRow(u) {
  const tr = el("tr", { "data-state": str(u.state, 20) });
  let model = u.model ? `${str(u.model, 60)}${isNum(u.version) ? " v" + u.version : ""}` : DASH;
  if (isNum(u.previous_version)) model += ` (from v${u.previous_version})`;
  const reason = [u.reason, u.detail].filter((x) => x).map((x) => str(x, 160)).join(": ");
  const fps = isNum(u.validated_fps) || isNum(u.baseline_fps) ? `${fmtNum(u.validated_fps, 1)} / ${fmtNum(u.baseline_fps, 1)}` : DASH;
  tr.append(el("td", { title: fmtAgo(u.updated_at) }, fmtTime(u.updated_at)), el("td", null, str(u.op, 30)),
    el("td", null, model), el("td", { class: "state" }, str(u.state, 30)), el("td", null, reason || DASH),
    el("td", { class: "num" }, fps));
  return tr;
}

function emptyRow(span, text) {
  const tr = el("tr", { class: "empty-row" });
  tr.append(el("td", { colspan: span }, text));
  return tr;
}
