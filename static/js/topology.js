// The lab's topology as an SVG diagram: traffic → lb → app replicas → cache and db, one column
// per role (one row per role on a narrow screen). Each node shows its live state by colour AND
// by a mark and a word. The edge into the load balancer carries the requests per second of the
// latest `metrics`, and each edge into an app replica that replica's answers per second, thicker
// for a larger share. Edges touching a node that cannot serve are dashed (red when it is down).
// Clicking a node (or Enter on it) opens a terminal on it.

import { el, svg } from "./util.js";

const COLUMN = { traffic: 0, lb: 1, app: 2, cache: 3, db: 3, other: 4 };
const HEADINGS = ["traffic", "load balancer", "app", "data", "other"];
const MARK = { healthy: "✓", starting: "…", pending: "○", unhealthy: "!", down: "✕", paused: "❚❚" };
const NODE_H = 46;
const GAP_Y = 14;
const TOP = 22; // room for the column headings
const ROW_GAP = 40; // between layers, top to bottom
const VERTICAL_BELOW = 440; // px of width under which the roles stack top to bottom

export function createTopology(ctx, root) {
  let serverEdges = null; // [[from, to], …] from the snapshot's topology, when it has one
  let metrics = null; // the latest metrics message, or null when there is none (yet)
  let width = 0;

  function column(node) {
    return COLUMN[node.role] ?? COLUMN.other;
  }

  // The edges to draw: the snapshot's, else derived from roles.
  function edges(nodes) {
    const names = new Set(nodes.map((node) => node.name));
    if (serverEdges && serverEdges.length) return serverEdges.filter(([a, b]) => names.has(a) && names.has(b));
    const byRole = (role) => nodes.filter((node) => node.role === role).map((node) => node.name);
    const [traffic, lb, app, data] = [byRole("traffic"), byRole("lb"), byRole("app"), [...byRole("cache"), ...byRole("db")]];
    const pairs = (from, to) => from.flatMap((a) => to.map((b) => [a, b]));
    return [...pairs(traffic, lb.length ? lb : app), ...pairs(lb, app), ...pairs(app, data)];
  }

  // Requests per second (label) and share of the traffic (thickness) of one edge, if known.
  function flow(from, to) {
    if (!metrics || ctx.panel.dataset.live !== "true") return null;
    const source = ctx.nodes.get(from);
    const target = ctx.nodes.get(to);
    if (target?.role === "app" && source?.role !== "app") {
      const counts = metrics.replicas || {};
      const total = Object.values(counts).reduce((sum, n) => sum + n, 0);
      const n = counts[to] || 0;
      return { label: `${n}/s`, share: total ? n / total : 0 };
    }
    if (source?.role === "traffic") {
      return { label: `${Math.round(metrics.rps)}/s`, share: metrics.rps > 0 ? 1 : 0 };
    }
    return null;
  }

  function draw() {
    width = root.clientWidth || 480;
    const nodes = [...ctx.nodes.values()];
    if (!nodes.length) {
      root.replaceChildren(el("p", "muted empty", ctx.labId ? "No nodes yet." : "Launch the lab to see its nodes."));
      return;
    }
    const used = [...new Set(nodes.map(column))].sort((a, b) => a - b);
    const layers = used.map((c) => nodes.filter((node) => column(node) === c).sort((a, b) => a.name.localeCompare(b.name, "en", { numeric: true })));
    const widest = Math.max(...layers.map((members) => members.length));
    // Roles left to right; on a narrow screen, top to bottom.
    const vertical = width < VERTICAL_BELOW;
    const colWidth = width / used.length;
    const place = new Map();
    let nodeW;
    let height;
    if (!vertical) {
      nodeW = Math.max(64, Math.min(116, colWidth - 44));
      height = TOP + widest * (NODE_H + GAP_Y) + 4;
      layers.forEach((members, i) => {
        const x = i * colWidth + (colWidth - nodeW) / 2;
        const offset = TOP + ((widest - members.length) * (NODE_H + GAP_Y)) / 2;
        members.forEach((node, row) => place.set(node.name, { x, y: offset + row * (NODE_H + GAP_Y) + GAP_Y / 2 }));
      });
    } else {
      nodeW = Math.max(64, Math.min(116, width / widest - 16));
      height = layers.length * (NODE_H + ROW_GAP) - ROW_GAP + 4;
      layers.forEach((members, i) => {
        const slot = width / members.length;
        members.forEach((node, j) => place.set(node.name, { x: j * slot + (slot - nodeW) / 2, y: 2 + i * (NODE_H + ROW_GAP) }));
      });
    }

    const figure = svg("svg", {
      class: "topology-diagram",
      width,
      height,
      viewBox: `0 0 ${width} ${height}`,
      role: "group",
      "aria-label": "Lab topology: click a node to open a terminal on it",
    });
    if (!vertical) {
      used.forEach((c, i) => {
        figure.append(svg("text", { class: "heading", x: i * colWidth + colWidth / 2, y: 12, "text-anchor": "middle" }, HEADINGS[c]));
      });
    }

    const edgeLayer = svg("g", { class: "edges" });
    const labelLayer = svg("g", { class: "edge-labels" });
    for (const [from, to] of edges(nodes)) {
      const a = place.get(from);
      const b = place.get(to);
      const states = [ctx.nodes.get(from).state, ctx.nodes.get(to).state];
      const [x1, y1] = vertical ? [a.x + nodeW / 2, a.y + NODE_H] : [a.x + nodeW, a.y + NODE_H / 2];
      const [x2, y2] = vertical ? [b.x + nodeW / 2, b.y] : [b.x, b.y + NODE_H / 2];
      const mid = vertical ? (y1 + y2) / 2 : (x1 + x2) / 2;
      const curve = vertical ? `C${x1},${mid} ${x2},${mid} ${x2},${y2}` : `C${mid},${y1} ${mid},${y2} ${x2},${y2}`;
      const known = flow(from, to);
      let kind = "";
      if (states.includes("down")) kind = "edge-down";
      else if (states.includes("paused") || states.includes("unhealthy")) kind = "edge-degraded";
      else if (known && known.share === 0) kind = "edge-idle";
      edgeLayer.append(
        svg("path", {
          class: `edge ${kind}`.trim(),
          d: `M${x1},${y1} ${curve}`,
          "stroke-width": known ? (1.5 + 7 * known.share).toFixed(1) : 1.5,
          "data-edge": `${from}>${to}`,
        }),
      );
      if (known) {
        const text = known.label;
        const lx = (x1 + x2) / 2;
        const ly = (y1 + y2) / 2;
        const w = text.length * 6.4 + 8;
        const label = svg("g", { class: `edge-label ${kind}`.trim(), "data-edge-label": `${from}>${to}` });
        label.append(svg("rect", { x: lx - w / 2, y: ly - 8, width: w, height: 16, rx: 3 }), svg("text", { x: lx, y: ly + 4, "text-anchor": "middle" }, text));
        labelLayer.append(label);
      }
    }
    figure.append(edgeLayer, labelLayer);

    for (const node of nodes) {
      const { x, y } = place.get(node.name);
      const openable = ctx.canOpenTerminal(node.name);
      const group = svg("g", {
        class: `topo-node state-${node.state}${openable ? " openable" : ""}`,
        "data-node": node.name,
        "data-state": node.state,
        "data-role": node.role,
        transform: `translate(${x},${y})`,
        role: "button",
        tabindex: openable ? 0 : -1,
        "aria-disabled": openable ? null : "true",
        "aria-label": `${node.name} (${node.role}): ${node.state}. ${openable ? "Open a terminal." : "No terminal available."}`,
      });
      group.append(
        svg("title", {}, openable ? `${node.name}: ${node.state}. Click to open a terminal.` : `${node.name}: ${node.state}`),
        svg("rect", { class: "box", width: nodeW, height: NODE_H, rx: 6 }),
        svg("text", { class: "name", x: 8, y: 18 }, node.name),
        svg("text", { class: "state", x: 8, y: 36 }, `${MARK[node.state] || "?"} ${node.state}`),
      );
      if (openable && nodeW >= 84) group.append(svg("text", { class: "term", x: nodeW - 6, y: 18, "text-anchor": "end" }, ">_"));
      figure.append(group);
    }
    root.replaceChildren(figure);
  }

  function open(event) {
    const group = event.target.closest("[data-node]");
    if (group && ctx.canOpenTerminal(group.dataset.node)) ctx.openTerminal(group.dataset.node);
  }
  root.addEventListener("click", open);
  root.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" && event.key !== " ") return;
    event.preventDefault();
    open(event);
  });
  new ResizeObserver(() => {
    if (root.clientWidth && Math.abs(root.clientWidth - width) > 1) draw();
  }).observe(root);

  return {
    snapshot(message) {
      serverEdges = message.topology && Array.isArray(message.topology.edges) ? message.topology.edges : null;
      metrics = null; // figures from before the gap are stale; the next second brings fresh ones
      draw();
    },
    lab: draw,
    node: draw,
    metrics(message) {
      metrics = message;
      draw();
    },
    live: draw,
    reset() {
      serverEdges = null;
      metrics = null;
      draw();
    },
  };
}
