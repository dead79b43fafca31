// Small live charts for the admin dashboard: a fixed-size ring buffer of
// samples and an SVG line chart drawn from it. The dashboard already polls
// /api/stats once a second; each answer becomes one sample here, so the
// charts cost the server nothing and show the time since the tab opened, up
// to the last `windowMs` (then they slide). Plain DOM, no library: a
// polyline (and a faint area under it) per series.

const SVG = "http://www.w3.org/2000/svg";
const W = 300;
const H = 64;

/** The last `capacity` samples, oldest first: {t, values: {key: number}}. */
export class Ring {
  constructor(capacity) {
    this.capacity = capacity;
    this.items = new Array(capacity);
    this.start = 0;
    this.length = 0;
  }

  push(t, values) {
    const i = (this.start + this.length) % this.capacity;
    this.items[i] = { t, values };
    if (this.length < this.capacity) this.length += 1;
    else this.start = (this.start + 1) % this.capacity;
  }

  *[Symbol.iterator]() {
    for (let k = 0; k < this.length; k++) yield this.items[(this.start + k) % this.capacity];
  }

  last() {
    return this.length ? this.items[(this.start + this.length - 1) % this.capacity] : null;
  }
}

/** A "nice" upper bound for the y axis: 1, 2 or 5 times a power of ten. */
export function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function fmt(n) {
  if (n >= 1000) return Math.round(n).toLocaleString();
  return n >= 10 || Number.isInteger(n) ? String(Math.round(n)) : n.toFixed(1);
}

function fmtSpan(ms) {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  return s % 60 && m < 5 ? `${m} min ${s % 60} s` : `${m} min`;
}

/**
 * A line chart in `figure`: one line per series ({key, label, cls}), the
 * x axis the last `windowMs` milliseconds, the y axis from 0 to a nice
 * maximum of what is visible. The figure's dataset carries what it shows
 * (samples, peak, last values) for assistive tech and tests alike.
 */
export class LineChart {
  constructor(figure, { title, series, windowMs, unit = "" }) {
    this.figure = figure;
    this.series = series;
    this.windowMs = windowMs;
    this.unit = unit;
    this.title = title;
    figure.classList.add("adm-chart");
    const head = document.createElement("figcaption");
    const name = document.createElement("span");
    name.className = "adm-chart-title";
    name.textContent = title;
    this.legend = document.createElement("span");
    this.legend.className = "adm-chart-legend";
    head.append(name, this.legend);
    this.svg = document.createElementNS(SVG, "svg");
    this.svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    this.svg.setAttribute("preserveAspectRatio", "none");
    this.svg.setAttribute("role", "img");
    this.grid = document.createElementNS(SVG, "line");
    this.grid.setAttribute("class", "adm-chart-grid");
    this.grid.setAttribute("x1", "0");
    this.grid.setAttribute("x2", String(W));
    this.grid.setAttribute("y1", "0.5");
    this.grid.setAttribute("y2", "0.5");
    this.svg.append(this.grid);
    this.lines = new Map();
    this.areas = new Map();
    for (const s of series) {
      const area = document.createElementNS(SVG, "polygon");
      area.setAttribute("class", `adm-chart-area ${s.cls || ""}`);
      this.svg.append(area);
      this.areas.set(s.key, area);
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("class", `adm-chart-line ${s.cls || ""}`);
      line.setAttribute("vector-effect", "non-scaling-stroke");
      line.dataset.key = s.key;
      this.svg.append(line);
      this.lines.set(s.key, line);
    }
    const foot = document.createElement("div");
    foot.className = "adm-chart-axis";
    this.peakLabel = document.createElement("span");
    this.spanLabel = document.createElement("span");
    foot.append(this.spanLabel, this.peakLabel);
    figure.replaceChildren(head, this.svg, foot);
  }

  /** Redraw from `ring` as of time `now` (same clock as the samples' t). */
  update(ring, now) {
    const first = [...ring].find((p) => p.t >= now - this.windowMs);
    // Until the window is full the x axis is the time since the first sample.
    const span = Math.max(1000, Math.min(this.windowMs, first ? now - first.t : 0));
    const from = now - span;
    const visible = [...ring].filter((p) => p.t >= from);
    let peak = 0;
    for (const p of visible) for (const s of this.series) peak = Math.max(peak, p.values[s.key] ?? 0);
    const top = niceMax(peak);
    for (const s of this.series) {
      const pts = visible.map((p) => {
        const x = ((p.t - from) / span) * W;
        const y = H - ((p.values[s.key] ?? 0) / top) * (H - 2) - 1;
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      });
      this.lines.get(s.key).setAttribute("points", pts.join(" "));
      const area = pts.length ? [`${pts[0].split(",")[0]},${H}`, ...pts, `${pts.at(-1).split(",")[0]},${H}`] : [];
      this.areas.get(s.key).setAttribute("points", area.join(" "));
    }
    const last = visible.length ? visible[visible.length - 1].values : {};
    this.legend.replaceChildren(...this.series.map((s) => {
      const item = document.createElement("span");
      item.className = `adm-chart-key ${s.cls || ""}`;
      item.textContent = `${s.label} ${fmt(last[s.key] ?? 0)}${this.unit}`;
      return item;
    }));
    this.peakLabel.textContent = `scale ${fmt(top)}${this.unit}`;
    this.spanLabel.textContent = `last ${fmtSpan(span)}`;
    const d = this.figure.dataset;
    d.samples = String(visible.length);
    d.peak = String(peak);
    for (const s of this.series) d[`last${s.key[0].toUpperCase()}${s.key.slice(1)}`] = String(last[s.key] ?? 0);
    this.svg.setAttribute("aria-label",
      `${this.title}, last ${fmtSpan(span)}: ` +
      this.series.map((s) => `${s.label} now ${fmt(last[s.key] ?? 0)}`).join(", ") +
      `, peak ${fmt(peak)}`);
  }
}
