// The lab panel: launch a lab, then follow it live over its WebSocket.
// Every message replaces the part of the page it describes, so a reconnect (which starts with a
// full snapshot) redraws the panel from the lab's current state instead of appending to stale UI.
//
// This module owns the socket, the lab's state, the node table, objectives and figures. The other
// features are modules of their own (topology, charts, timeline, faults, hints, expiry,
// terminals). Each is made from a small context (`ctx`) and gets the socket's messages by type:
// `feature.snapshot(message)`, `feature.node(message)`, `feature.metrics(message)`, … plus
// `feature.lab(lab)` whenever the lab object changes (socket or HTTP answer), `feature.live(state)`
// when the socket comes or goes, and `feature.reset()` when a new lab replaces the old one.
//
// Read-only mode (`data-read-only="true"` on the panel: an instructor watching a learner's lab)
// follows the same socket with only the topology, charts, timeline, nodes and objectives: no
// controls, faults, hints, questions or terminals. A snapshot embedded in the page
// (`<script id="lab-snapshot" type="application/json">`) draws the panel before the socket opens.

import { createCharts } from "./charts.js";
import { createExpiry } from "./expiry.js";
import { createIdle } from "./idle.js";
import { createFaults } from "./faults.js";
import { createHints } from "./hints.js";
import { createTerminals } from "./terminal.js";
import { createTimeline } from "./timeline.js";
import { createTopology } from "./topology.js";
import { createQuestion } from "./questions.js";
import { el, postJSON, say } from "./util.js";

const panel = document.getElementById("lab-panel");
const readOnly = panel.dataset.readOnly === "true";
const csrf = panel.querySelector("input[name=csrfmiddlewaretoken]")?.value ?? "";
const field = (name) => panel.querySelector(`[data-field="${name}"]`);
const list = (name) => panel.querySelector(`[data-list="${name}"]`);
const button = (name) => panel.querySelector(`[data-action="${name}"]`);
const setDisabled = (name, disabled) => {
  const control = button(name);
  if (control) control.disabled = disabled; // read-only: there are no controls
};
const ENDED = new Set(["stopped", "failed"]);
const NO_SHELL = new Set(["down", "paused"]); // a stopped or frozen container cannot run one

let labId = panel.dataset.labId || null;
let labState = null;
let lastLab = null; // the last lab object seen, so a failed action can redraw the buttons as they were
let socket = null;
let retryDelay = 500;
const nodes = new Map();
const objectives = new Map();
const objectiveItems = new Map(); // key -> its list item, kept across updates (question forms keep their input)

const ctx = {
  panel,
  nodes,
  get labId() {
    return labId;
  },
  get labState() {
    return labState;
  },
  url: (path) => `${panel.dataset.apiRoot}${labId}/${path}`,
  post: (url, body) => postJSON(url, csrf, body),
  canOpenTerminal(name) {
    if (readOnly) return false;
    const node = nodes.get(name);
    return labState === "ready" && Boolean(node) && !NO_SHELL.has(node.state);
  },
  openTerminal: (name) => terminals?.open(name),
  extend: () => extend(),
  // Ask the socket for a fresh snapshot (e.g. after a skip reveals the solution).
  refresh() {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "snapshot" }));
  },
};

const terminals = readOnly ? null : createTerminals(ctx, document.getElementById("terminals"));
const watched = [
  createTopology(ctx, document.getElementById("topology")),
  createCharts(ctx, panel.querySelector("[data-charts]")),
  createTimeline(ctx, panel.querySelector("[data-timeline-section]")),
];
const features = readOnly
  ? watched
  : [
      createExpiry(ctx, panel),
      createIdle(ctx, panel),
      ...watched,
      createFaults(ctx, panel.querySelector("[data-faults-section]")),
      createHints(ctx, panel.querySelector("[data-hints-section]")),
      terminals,
    ];

function dispatch(type, message) {
  for (const feature of features) {
    if (typeof feature[type] !== "function") continue;
    try {
      feature[type](message);
    } catch (error) {
      console.error(`lab page: ${type} handler failed`, error); // one broken feature must not stop the others
    }
  }
}

// "true" while the socket is open, "false" while it is away (live figures grey out), "ended"
// once the lab has stopped or failed, "idle" before a lab exists.
function setLive(state) {
  panel.dataset.live = state;
  dispatch("live", state);
}

function renderLab(lab) {
  lastLab = lab;
  labState = lab.state;
  field("state").textContent = lab.state;
  field("reason").textContent = lab.state === "failed" ? lab.reason : "";
  const live = lab.state && !ENDED.has(lab.state);
  setDisabled("launch", Boolean(live));
  setDisabled("break", lab.state !== "ready");
  setDisabled("extend", lab.state !== "ready");
  setDisabled("stop", !live);
  renderNodes(); // terminal buttons follow the lab's state
  renderObjectives(); // so do the question forms
  dispatch("lab", lab);
}

function renderSteps(steps) {
  list("steps").replaceChildren(...steps.map((step) => el("li", "", step.message)));
}

function renderNodes() {
  if (!nodes.size) {
    const row = el("tr");
    const cell = el("td", "muted", labId ? "No nodes yet." : "Launch the lab to see its nodes.");
    cell.colSpan = readOnly ? 4 : 5;
    row.append(cell);
    list("nodes").replaceChildren(row);
    return;
  }
  const rows = [...nodes.values()].map((node) => {
    const row = el("tr", `node state-${node.state}`);
    row.dataset.node = node.name;
    const name = el("td", "", node.name);
    name.title = `docker exec -it ${node.container} sh`;
    const cells = [name, el("td", "", node.role), el("td", "state", node.state), el("td", "container", node.container)];
    if (readOnly) {
      row.append(...cells);
      return row;
    }
    const open = el("button", "small", "Terminal");
    open.type = "button";
    open.dataset.terminalOpen = node.name;
    open.disabled = !ctx.canOpenTerminal(node.name);
    open.title = open.disabled ? `No shell: ${labState === "ready" ? `${node.name} is ${node.state}` : "the lab is not running"}` : `Open a shell on ${node.name}`;
    const action = el("td", "action");
    action.append(open);
    row.append(...cells, action);
    return row;
  });
  list("nodes").replaceChildren(...rows);
}

function objectiveItem(objective) {
  let entry = objectiveItems.get(objective.key);
  if (!entry) {
    const item = el("li");
    item.dataset.objective = objective.key;
    entry = { item, title: el("span", "title"), reason: el("span", "reason"), question: null };
    item.append(entry.title, entry.reason);
    if (objective.question && !readOnly) {
      entry.question = createQuestion(ctx, objective, (answered) => handlers.objective(answered));
      item.append(entry.question.element);
    }
    objectiveItems.set(objective.key, entry);
  }
  entry.item.className = `objective ${objective.status}${objective.question ? " question" : ""}`;
  entry.title.textContent = objective.title;
  entry.reason.textContent = objective.reason;
  if (entry.question) entry.question.update(objective);
  return entry.item;
}

function renderObjectives() {
  const items = [...objectives.values()].map(objectiveItem);
  for (const key of objectiveItems.keys()) if (!objectives.has(key)) objectiveItems.delete(key);
  const shown = list("objectives");
  // Re-inserting would take the focus from a question being typed into: only when the set changes.
  const same = shown.children.length === items.length && items.every((item, i) => shown.children[i] === item);
  if (!same) shown.replaceChildren(...items);
}

function renderMetrics(metrics) {
  const show = (name, text) => {
    panel.querySelector(`[data-metric="${name}"]`).textContent = text;
  };
  show("rps", metrics.rps.toFixed(1));
  show("p50_ms", metrics.p50_ms == null ? "–" : `${metrics.p50_ms.toFixed(0)} ms`);
  show("p95_ms", metrics.p95_ms == null ? "–" : `${metrics.p95_ms.toFixed(0)} ms`);
  show("error_rate", `${(metrics.error_rate * 100).toFixed(1)} %`);
  const replicas = Object.entries(metrics.replicas).sort().map(([name, n]) => `${name}: ${n}`);
  show("replicas", replicas.join(" · ") || "none");
}

const handlers = {
  snapshot(message) {
    nodes.clear();
    message.nodes.forEach((node) => nodes.set(node.name, node));
    renderLab(message.lab);
    renderSteps(message.steps);
    renderNodes();
    objectives.clear();
    message.objectives.forEach((objective) => objectives.set(objective.key, objective));
    renderObjectives();
  },
  lab(message) {
    renderLab(message);
    if (ENDED.has(message.state) && socket) socket.close(1000);
  },
  step(message) {
    list("steps").append(el("li", "", message.message));
  },
  node(message) {
    nodes.set(message.name, message);
    renderNodes();
  },
  objective(message) {
    objectives.set(message.key, message);
    renderObjectives();
  },
  metrics: renderMetrics,
  error(message) {
    console.warn("lab socket:", message.message);
  },
  pong() {},
};

// A refused handshake reaches the browser as a bare close (the server's 4401/4404 codes are lost
// on the way), so ask the HTTP API whether the lab is still ours before trying again.
async function labStillReachable() {
  try {
    const response = await fetch(`${panel.dataset.apiRoot}${labId}/`);
    if (response.status === 401 || response.status === 404) {
      field("connection").textContent = response.status === 401 ? "(log in again to follow this lab)" : "(this lab is not available)";
      return false;
    }
  } catch (error) {
    // The server itself is away: keep retrying.
  }
  return true;
}

function connect() {
  if (!labId) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/labs/${labId}/`);
  let opened = false;
  let heard = false;
  socket.addEventListener("open", () => {
    opened = true;
  });
  socket.addEventListener("message", (event) => {
    // The first message, not the open, ends the backoff and shows the page live: a socket the
    // server closes right away (4503 while Redis is away) keeps backing off instead of
    // reconnecting twice a second, and the page does not flicker "live" on each try.
    if (!heard) {
      heard = true;
      retryDelay = 500;
      field("connection").textContent = "";
      setLive("true");
    }
    const message = JSON.parse(event.data);
    if (handlers[message.type]) handlers[message.type](message);
    dispatch(message.type, message);
  });
  socket.addEventListener("close", async (event) => {
    if (event.target !== socket) return; // an older socket, replaced by a newer one
    socket = null;
    if (ENDED.has(labState)) {
      setLive("ended");
      return;
    }
    setLive("false");
    if (event.code === 4404 || event.code === 4401) return;
    if (!opened && !(await labStillReachable())) return;
    // The figures on the page are now stale: say so, and come back with a fresh snapshot.
    field("connection").textContent = "(live updates lost, reconnecting…)";
    setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 10000);
  });
}

async function act(name, run) {
  button(name).disabled = true;
  say(field("control-error"), "");
  try {
    await run();
  } catch (error) {
    say(field("control-error"), error.message);
    if (lastLab) renderLab(lastLab); // give the button back
    else button(name).disabled = false;
  }
}

async function extend() {
  const lab = await ctx.post(ctx.url("extend"), { minutes: 30 });
  renderLab(lab);
  return lab;
}

function listen(name, run) {
  button(name)?.addEventListener("click", run);
}

listen("launch", () =>
  act("launch", async () => {
    const lab = await ctx.post(panel.dataset.launchUrl);
    if (lab.id !== labId) {
      labId = lab.id;
      panel.dataset.labId = lab.id;
      nodes.clear();
      objectives.clear();
      objectiveItems.clear(); // a new lab: fresh question forms
      dispatch("reset");
    }
    renderLab(lab);
    if (socket) socket.close(1000);
    connect();
  }),
);
listen("break", () => act("break", () => ctx.post(ctx.url("break"))));
listen("extend", () => act("extend", extend));
listen("stop", () => act("stop", () => ctx.post(ctx.url("stop"))));

list("nodes").addEventListener("click", (event) => {
  const open = event.target.closest("[data-terminal-open]");
  if (open && !open.disabled) ctx.openTerminal(open.dataset.terminalOpen);
});

// A snapshot rendered into the page: the panel is drawn (as "not live") before the socket opens.
const embedded = document.getElementById("lab-snapshot");
if (embedded) {
  const message = JSON.parse(embedded.textContent);
  handlers.snapshot(message);
  dispatch("snapshot", message);
}
setLive(labId ? "false" : "idle");
if (ENDED.has(labState)) setLive("ended");
else connect();
