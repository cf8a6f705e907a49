// The rollout view: state, counts, waves, abort reason and tripped devices, and the pause /
// resume / abort buttons (POST with the operator's bearer token, kept in sessionStorage).

import {
  ApiFailure, DASH, api, clearError, deviceHref, el, fmtWhen, isNum, reportFailure, setText,
  showError, str,
} from "./util.js";

const TOKEN_KEY = "edge-agent-fleet-token";
const COUNT_STATES = ["pending", "in_progress", "active", "failed", "rolled_back", "offline"];
const PROBLEM_STATES = new Set(["failed", "rolled_back", "offline"]);
/** Which operations each rollout state allows (the controller refuses the others with 400). */
const ALLOWED = {
  planned: ["pause", "abort"],
  running: ["pause", "abort"],
  paused: ["resume", "abort"],
};

function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch (err) {
    return "";
  }
}

function storeToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch (err) {
    // storage disabled: the token lives in the input only
  }
}

function specLines(spec) {
  if (!spec || typeof spec !== "object") return { plan: DASH, criteria: DASH };
  const plan = [
    `target ${str(spec.target, 80)}`,
    spec.canary !== undefined ? `canary ${str(spec.canary, 20)}` : null,
    Array.isArray(spec.waves) ? `waves ${spec.waves.slice(0, 20).map((w) => str(w, 10)).join(", ")}` : null,
    isNum(spec.rate_per_min) ? `${spec.rate_per_min}/min` : null,
    isNum(spec.soak_s) ? `soak ${spec.soak_s} s` : null,
  ].filter(Boolean).join(" · ");
  const criteria = [
    isNum(spec.max_failed_pct) ? `failed > ${spec.max_failed_pct} %` : null,
    isNum(spec.min_fps_ratio) ? `fps < ${spec.min_fps_ratio} × baseline` : null,
    isNum(spec.max_nan) ? `NaN rollbacks > ${spec.max_nan}` : null,
    isNum(spec.max_metric_drop) ? `task metric drop > ${spec.max_metric_drop}` : null,
  ].filter(Boolean).join(" · ");
  return { plan: plan || DASH, criteria: criteria || DASH };
}

const FACTS = [
  ["id", "Rollout"], ["fleet", "Fleet"], ["plan", "Plan"], ["criteria", "Aborts when"],
  ["created", "Created"], ["started", "Started"], ["finished", "Finished"], ["wave", "Current wave"],
];

export class RolloutView {
  constructor() {
    this.id = null;
    this.status = null;
    this.generation = 0;
    this.busy = false;
    this.title = document.getElementById("rollout-title");
    this.state = document.getElementById("rollout-state");
    this.tokenInput = document.getElementById("token");
    this.buttons = { pause: document.getElementById("pause"), resume: document.getElementById("resume"), abort: document.getElementById("abort") };
    this.dd = {};
    const dl = document.getElementById("rollout-facts");
    for (const [key, label] of FACTS) {
      const dd = el("dd", { "data-fact": key });
      const div = el("div", { class: "fact" });
      div.append(el("dt", null, label), dd);
      dl.append(div);
      this.dd[key] = dd;
    }
    for (const [op, button] of Object.entries(this.buttons)) button.addEventListener("click", () => this.act(op));
    this.tokenInput.addEventListener("change", () => this.takeToken());
    this.tokenInput.addEventListener("keydown", (ev) => { if (ev.key === "Enter") this.takeToken(); });
    document.getElementById("token-forget").addEventListener("click", () => {
      storeToken("");
      this.showTokenUi();
    });
    this.showTokenUi();
  }

  takeToken() {
    const token = this.tokenInput.value.trim();
    if (!token) return "";
    storeToken(token);
    this.tokenInput.value = "";
    this.showTokenUi();
    return token;
  }

  showTokenUi() {
    const has = storedToken() !== "";
    document.getElementById("token-box").hidden = has;
    document.getElementById("token-set").hidden = !has;
  }

  open(id, cached) {
    this.id = id;
    const gen = ++this.generation;
    this.status = null;
    setText(this.title, `Rollout ${id}`);
    document.title = `Rollout ${id} · Edge Agent fleet`;
    this.showTokenUi();
    if (cached) this.render(cached);
    else this.enableButtons(null);
    api(`/api/rollouts/${encodeURIComponent(id)}`)
      .then((s) => { if (gen === this.generation) this.render(s); })
      .catch((err) => { if (gen === this.generation) reportFailure(err); });
  }

  close() {
    this.id = null;
    this.generation++;
  }

  onRollout(s) {
    if (this.id !== null && s && s.id === this.id) this.render(s);
  }

  render(s) {
    this.status = s;
    setText(this.title, `${str(s.model, 60)} v${s.version ?? "?"}`);
    setText(this.state, str(s.state, 20));
    this.state.dataset.state = String(s.state);
    const lines = specLines(s.spec);
    const waves = Array.isArray(s.waves) ? s.waves : [];
    const facts = {
      id: str(s.id), fleet: str(s.fleet), plan: lines.plan, criteria: lines.criteria,
      created: fmtWhen(s.created_at), started: fmtWhen(s.started_at), finished: fmtWhen(s.finished_at),
      wave: waves.length ? `${isNum(s.current_wave) ? s.current_wave : DASH} of ${waves.length - 1}` : DASH,
    };
    for (const [key] of FACTS) setText(this.dd[key], facts[key]);
    const counts = s.counts && typeof s.counts === "object" ? s.counts : {};
    for (const key of COUNT_STATES) {
      const node = document.querySelector(`#rollout-counts [data-count="${key}"]`);
      setText(node, isNum(counts[key]) ? String(counts[key]) : "0");
    }
    this.renderAbort(s);
    this.renderWaves(waves);
    this.renderProblems(s.devices && typeof s.devices === "object" ? s.devices : {});
    this.enableButtons(s.state);
  }

  renderAbort(s) {
    const box = document.getElementById("abort-box");
    const reason = s.abort_reason ? str(s.abort_reason, 500) : "";
    box.hidden = !reason;
    setText(document.getElementById("abort-reason"), reason);
    const tripped = Array.isArray(s.tripped) ? s.tripped.slice(0, 100) : [];
    const target = document.getElementById("tripped");
    target.replaceChildren();
    tripped.forEach((d, i) => {
      if (i) target.append(", ");
      target.append(el("a", { href: deviceHref(String(d)) }, str(d, 64)));
    });
    if (Array.isArray(s.tripped) && s.tripped.length > tripped.length) target.append(` and ${s.tripped.length - tripped.length} more`);
    document.getElementById("tripped-box").hidden = tripped.length === 0;
  }

  renderWaves(waves) {
    const rows = waves.slice(0, 200).map((w) => {
      const tr = el("tr", { "data-state": str(w.state, 20) });
      const count = Array.isArray(w.devices) ? w.devices.length : isNum(w.devices) ? w.devices : 0;
      tr.append(el("td", { class: "num", title: w.index === 0 ? "canary" : null }, String(w.index)),
        el("td", { class: "num" }, String(count)), el("td", { class: "state" }, str(w.state, 20)),
        el("td", null, fmtWhen(w.started_at)), el("td", null, fmtWhen(w.done_at)));
      return tr;
    });
    document.querySelector("#waves tbody").replaceChildren(...rows);
  }

  renderProblems(devices) {
    const entries = Object.entries(devices).filter(([, p]) => p && (PROBLEM_STATES.has(p.state) || p.reason));
    entries.sort((a, b) => String(a[1].state).localeCompare(String(b[1].state)) || a[0].localeCompare(b[0]));
    const rows = entries.slice(0, 300).map(([id, p]) => {
      const tr = el("tr", { "data-state": str(p.state, 20) });
      const cell = el("td");
      cell.append(el("a", { href: deviceHref(id) }, str(id, 64)));
      tr.append(cell, el("td", { class: "num" }, isNum(p.wave) ? String(p.wave) : DASH),
        el("td", { class: "state" }, str(p.state, 20)), el("td", null, str(p.reason, 120)), el("td", null, str(p.note, 200)));
      return tr;
    });
    document.querySelector("#rollout-problems tbody").replaceChildren(...rows);
    document.getElementById("rollout-problems-empty").hidden = rows.length > 0;
  }

  enableButtons(state) {
    const allowed = ALLOWED[state] || [];
    for (const [op, button] of Object.entries(this.buttons)) button.disabled = this.busy || !allowed.includes(op);
  }

  async act(op) {
    if (this.id === null || this.busy) return;
    const token = this.takeToken() || storedToken();
    if (!token) {
      this.showTokenUi();
      this.tokenInput.focus();
      showError(`an API token is needed to ${op} a rollout`,
        "enter the controller's token (the value of EDGE_AGENT_FLEET_TOKEN or api.token_file) in the API token field");
      return;
    }
    const id = this.id;
    this.busy = true;
    this.enableButtons(this.status && this.status.state);
    try {
      const answer = await api(`/api/rollouts/${encodeURIComponent(id)}/${op}`, {
        method: "POST",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body: "{}",
      });
      clearError();
      if (this.id === id) this.render(answer);
    } catch (err) {
      if (err instanceof ApiFailure && err.status === 401) {
        storeToken("");
        this.showTokenUi();
        this.tokenInput.focus();
      }
      reportFailure(err);
    } finally {
      this.busy = false;
      this.enableButtons(this.status && this.status.state);
    }
  }
}
