// A small canvas line chart: one series over time, nulls (and long silences) drawn as gaps,
// the y axis labelled with its min and max and the unit, the x axis with its start and end time.

import { fmtTime, isNum } from "./util.js";

const PAD = { left: 58, right: 10, top: 18, bottom: 20 };

function fmtValue(v, unit) {
  const abs = Math.abs(v);
  const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : 2;
  return `${v.toFixed(digits)} ${unit}`;
}

function yRange(values) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  const span = hi - lo;
  const pad = span > 0 ? span * 0.08 : Math.max(1, Math.abs(hi) * 0.05);
  lo -= pad;
  hi += pad;
  if (Math.min(...values) >= 0 && lo < 0) lo = 0;
  return [lo, hi];
}

/** The usual spacing of the samples; a silence longer than 3 of them is a gap. */
function gapLimit(times) {
  if (times.length < 3) return Infinity;
  const steps = [];
  for (let i = 1; i < times.length; i++) steps.push(times[i] - times[i - 1]);
  steps.sort((a, b) => a - b);
  return Math.max(30, 3 * steps[Math.floor(steps.length / 2)]);
}

function prepare(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const width = Math.max(120, canvas.clientWidth);
  const height = Math.max(80, canvas.clientHeight);
  if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return { ctx, width, height };
}

function drawFrame(ctx, box, style) {
  ctx.strokeStyle = style.grid;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (const f of [0, 0.5, 1]) {
    const y = Math.round(box.top + f * box.h) + 0.5;
    ctx.moveTo(box.left, y);
    ctx.lineTo(box.left + box.w, y);
  }
  ctx.stroke();
}

function drawLabels(ctx, box, style, labels) {
  ctx.fillStyle = style.muted;
  ctx.font = style.font;
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  ctx.fillText(labels.max, box.left - 6, box.top);
  ctx.fillText(labels.min, box.left - 6, box.top + box.h);
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  ctx.fillText(labels.start, box.left, box.top + box.h + 5);
  ctx.textAlign = "right";
  ctx.fillText(labels.end, box.left + box.w, box.top + box.h + 5);
  if (labels.last) {
    ctx.fillStyle = style.line;
    ctx.textBaseline = "bottom";
    ctx.fillText(labels.last, box.left + box.w, box.top - 3);
  }
}

function drawSeries(ctx, pts, style, limit) {
  ctx.strokeStyle = style.line;
  ctx.fillStyle = style.line;
  ctx.lineWidth = 1.75;
  ctx.lineJoin = "round";
  let run = [];
  const flush = () => {
    if (run.length === 1) {
      ctx.beginPath();
      ctx.arc(run[0].x, run[0].y, 2, 0, Math.PI * 2);
      ctx.fill();
    } else if (run.length > 1) {
      ctx.beginPath();
      ctx.moveTo(run[0].x, run[0].y);
      for (let i = 1; i < run.length; i++) ctx.lineTo(run[i].x, run[i].y);
      ctx.stroke();
    }
    run = [];
  };
  let prevTs = null;
  for (const p of pts) {
    if (p.y === null) {
      flush();
    } else {
      if (prevTs !== null && p.ts - prevTs > limit) flush();
      run.push(p);
      prevTs = p.ts;
    }
  }
  flush();
}

function styleOf(canvas) {
  const css = getComputedStyle(canvas);
  return {
    line: css.color || "#2563eb",
    grid: css.getPropertyValue("--chart-grid").trim() || "#e5e7eb",
    muted: css.getPropertyValue("--chart-text").trim() || "#6b7280",
    font: `11px ${css.fontFamily || "sans-serif"}`,
  };
}

/**
 * Draws `points` ([{ts, <field>: number|null}], oldest first) of `field` on `canvas` over the
 * window [start, end] (epoch seconds). Sets canvas.dataset.points to how many points were drawn.
 */
export function drawChart(canvas, points, field, start, end) {
  const unit = canvas.dataset.unit || "";
  const { ctx, width, height } = prepare(canvas);
  const style = styleOf(canvas);
  const box = { left: PAD.left, top: PAD.top, w: width - PAD.left - PAD.right, h: height - PAD.top - PAD.bottom };
  const usable = points.filter((p) => isNum(p.ts));
  const values = usable.map((p) => p[field]).filter(isNum);
  canvas.dataset.points = String(values.length);
  drawFrame(ctx, box, style);
  if (values.length === 0) {
    drawLabels(ctx, box, style, { max: "", min: "", start: fmtTime(start), end: fmtTime(end) });
    ctx.fillStyle = style.muted;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText("no data in this hour", box.left + box.w / 2, box.top + box.h / 2);
    canvas._plotted = [];
    canvas.setAttribute("aria-label", `no ${unit} data in the last hour`);
    return;
  }
  const [lo, hi] = yRange(values);
  const span = Math.max(1, end - start);
  const pts = usable.map((p) => ({
    ts: p.ts,
    v: isNum(p[field]) ? p[field] : null,
    x: box.left + ((p.ts - start) / span) * box.w,
    y: isNum(p[field]) ? box.top + (1 - (p[field] - lo) / (hi - lo)) * box.h : null,
  }));
  ctx.save();
  ctx.beginPath();
  ctx.rect(box.left - 3, box.top - 3, box.w + 6, box.h + 6);
  ctx.clip();
  drawSeries(ctx, pts, style, gapLimit(usable.map((p) => p.ts)));
  ctx.restore();
  const last = values[values.length - 1];
  drawLabels(ctx, box, style, {
    max: fmtValue(hi, unit),
    min: fmtValue(lo, unit),
    start: fmtTime(start),
    end: fmtTime(end),
    last: `latest ${fmtValue(last, unit)}`,
  });
  canvas._plotted = pts.filter((p) => p.y !== null);
  canvas.setAttribute("aria-label",
    `${values.length} points, ${fmtValue(Math.min(...values), unit)} to ${fmtValue(Math.max(...values), unit)}`);
}

/** Shows the nearest point's time and value as the canvas's tooltip. */
export function attachHover(canvas) {
  canvas.addEventListener("mousemove", (ev) => {
    const pts = canvas._plotted || [];
    if (pts.length === 0) return;
    const rect = canvas.getBoundingClientRect();
    const x = ev.clientX - rect.left;
    let best = pts[0];
    for (const p of pts) if (Math.abs(p.x - x) < Math.abs(best.x - x)) best = p;
    canvas.title = `${fmtTime(best.ts)}: ${fmtValue(best.v, canvas.dataset.unit || "")}`;
  });
}
