// Time series of the last five minutes of traffic, fed by the socket's `metrics` messages (one a
// second): requests/s, p50/p95 latency, error rate, and each replica's share of the answers.
// uPlot draws them; they follow the width of their container. With no figures yet the section
// says "Waiting for traffic figures"; a gap in the figures (socket away, lab not ready) is drawn
// as a gap, not as a straight line across it.

import uPlot from "uplot";

import { el } from "./util.js";

const WINDOW = 300; // seconds shown
const HEIGHT = 120;
const REPLICA_COLOURS = ["#0969da", "#8250df", "#bf3989", "#1b7c83", "#9a6700", "#57606a"];
const REPLICA_DASHES = [[], [6, 3], [2, 3], [10, 3, 2, 3]];

// Legend values: the hovered point's, or the latest figure when the cursor is elsewhere.
const fixed = (digits, unit = "") => (u, value, series, index) => {
  if (index == null) {
    const column = u.data[series] || [];
    for (let i = column.length - 1; i >= 0 && value == null; i--) value = column[i];
  }
  return value == null ? "–" : `${value.toFixed(digits)}${unit}`;
};
const compact = (u, splits) => splits.map((v) => (v >= 1000 ? `${+(v / 1000).toFixed(1)}k` : String(+v.toFixed(2))));
const hhmm = (u, splits) => splits.map((t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }));

// Each chart: its title, its series, and how to read them from the rows kept.
const CHARTS = [
  {
    key: "rps",
    title: "Requests/s",
    series: () => [{ label: "req/s", stroke: "#0969da", width: 2, fill: "rgba(9,105,218,0.08)", value: fixed(1) }],
    columns: (rows) => [rows.map((row) => row.rps)],
    yMin: 5,
  },
  {
    key: "latency",
    title: "Latency (ms)",
    series: () => [
      { label: "p50", stroke: "#1a7f37", width: 2, value: fixed(0, " ms") },
      { label: "p95", stroke: "#bc4c00", width: 2, dash: [6, 4], value: fixed(0, " ms") },
    ],
    columns: (rows) => [rows.map((row) => row.p50), rows.map((row) => row.p95)],
    yMin: 10,
  },
  {
    key: "errors",
    title: "Errors (%)",
    series: () => [{ label: "errors", stroke: "#cf222e", width: 2, fill: "rgba(207,34,46,0.1)", value: fixed(1, " %") }],
    columns: (rows) => [rows.map((row) => (row.errors == null ? null : row.errors * 100))],
    yMin: 5,
  },
  {
    key: "share",
    title: "Share of answers per replica (%)",
    series: (replicas) =>
      replicas.map((name, i) => ({
        label: name,
        stroke: REPLICA_COLOURS[i % REPLICA_COLOURS.length],
        width: 2,
        dash: REPLICA_DASHES[i % REPLICA_DASHES.length],
        value: fixed(0, " %"),
      })),
    columns: (rows, replicas) =>
      replicas.map((name) =>
        rows.map((row) => {
          if (!row.replicas) return null;
          const total = Object.values(row.replicas).reduce((sum, n) => sum + n, 0);
          return total ? (100 * (row.replicas[name] || 0)) / total : 0;
        }),
      ),
    yMin: 100,
  },
];

export function createCharts(ctx, root) {
  let rows = []; // {t, rps, p50, p95, errors, replicas}; a row of nulls marks a gap
  let latest = 0;
  const plots = new Map(); // chart key -> {plot, box, seriesKey}
  const empty = root.querySelector(".chart-empty") || root.appendChild(el("p", "chart-empty muted", "Waiting for traffic figures"));
  const grid = root.appendChild(el("div", "chart-grid"));
  grid.hidden = true;
  const boxes = new Map(
    CHARTS.map((chart) => {
      const figure = el("figure", "chart");
      figure.dataset.chart = chart.key;
      const box = el("div", "plot");
      figure.append(el("figcaption", "", chart.title), box);
      grid.append(figure);
      return [chart.key, box];
    }),
  );

  function replicaNames() {
    const names = new Set([...ctx.nodes.values()].filter((node) => node.role === "app").map((node) => node.name));
    for (const row of rows) Object.keys(row.replicas || {}).forEach((name) => names.add(name));
    return [...names].sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
  }

  function options(chart, box, replicas) {
    return {
      width: Math.max(200, box.clientWidth),
      height: HEIGHT,
      legend: { show: true, live: true },
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: { time: true, range: () => [latest - WINDOW, latest] },
        y: { range: (u, min, max) => [0, Math.max(chart.yMin, (max || 0) * 1.1)] },
      },
      axes: [
        { stroke: "#57606a", grid: { stroke: "#eaeef2" }, ticks: { stroke: "#d0d7de" }, space: 60, size: 28, values: hhmm },
        { stroke: "#57606a", grid: { stroke: "#eaeef2" }, ticks: { stroke: "#d0d7de" }, size: 40, space: 28, values: compact },
      ],
      series: [{ value: (u, t) => (t == null ? "–" : new Date(t * 1000).toLocaleTimeString()) }, ...chart.series(replicas)],
    };
  }

  function draw() {
    const hasData = rows.some((row) => row.rps != null);
    empty.hidden = hasData;
    grid.hidden = !hasData;
    root.classList.toggle("empty", !hasData);
    if (!hasData) return;
    const replicas = replicaNames();
    const t = rows.map((row) => row.t);
    for (const chart of CHARTS) {
      const box = boxes.get(chart.key);
      const data = [t, ...chart.columns(rows, replicas)];
      const seriesKey = chart.key === "share" ? replicas.join(",") : "";
      let entry = plots.get(chart.key);
      if (entry && entry.seriesKey !== seriesKey) {
        entry.plot.destroy(); // a replica appeared: rebuild with one more series
        entry = null;
      }
      if (!entry) {
        entry = { plot: new uPlot(options(chart, box, replicas), data, box), seriesKey };
        plots.set(chart.key, entry);
      } else {
        entry.plot.setData(data);
      }
    }
  }

  function add(message) {
    if (!Number.isFinite(message.t) || !Number.isFinite(message.rps)) return;
    const last = rows[rows.length - 1];
    if (last && message.t <= last.t) return; // a repeat
    if (last && last.rps != null && message.t - last.t > 3) rows.push({ t: last.t + 1, rps: null, p50: null, p95: null, errors: null, replicas: null });
    rows.push({ t: message.t, rps: message.rps, p50: message.p50_ms, p95: message.p95_ms, errors: message.error_rate, replicas: message.replicas || {} });
    latest = message.t;
    while (rows.length && rows[0].t < latest - WINDOW) rows.shift();
    while (rows.length && rows[0].rps == null) rows.shift(); // never start on a gap
  }

  new ResizeObserver(() => {
    for (const [key, entry] of plots) {
      const width = boxes.get(key).clientWidth;
      if (width && Math.abs(width - entry.plot.width) > 1) entry.plot.setSize({ width, height: HEIGHT });
    }
  }).observe(grid);

  function reset() {
    rows = [];
    latest = 0;
    for (const entry of plots.values()) entry.plot.destroy();
    plots.clear();
    draw();
  }

  draw();
  return {
    // A snapshot may carry recent figures (a `metrics` list); then a reload redraws the charts.
    snapshot(message) {
      if (Array.isArray(message.metrics)) {
        message.metrics.forEach(add);
        draw();
      }
    },
    metrics(message) {
      add(message);
      draw();
    },
    reset,
  };
}
