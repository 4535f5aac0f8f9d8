// The lab panel: launch a lab, then follow it live over its WebSocket.
// Every message replaces the part of the page it describes, so a reconnect (which starts with a
// full snapshot) redraws the panel from the lab's current state instead of appending to stale UI.

const panel = document.getElementById("lab-panel");
const csrf = panel.querySelector("input[name=csrfmiddlewaretoken]").value;
const field = (name) => panel.querySelector(`[data-field="${name}"]`);
const list = (name) => panel.querySelector(`[data-list="${name}"]`);
const button = (name) => panel.querySelector(`[data-action="${name}"]`);
const ENDED = new Set(["stopped", "failed"]);

let labId = panel.dataset.labId || null;
let labState = null;
let socket = null;
let retryDelay = 500;
const nodes = new Map();
const objectives = new Map();

async function post(url, body = {}) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
    body: JSON.stringify(body),
  });
  const payload = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(payload.error || `HTTP ${response.status}`);
  return payload;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderLab(lab) {
  labState = lab.state;
  field("state").textContent = lab.state;
  field("reason").textContent = lab.state === "failed" ? lab.reason : "";
  field("expiry").textContent = lab.expires_at && !ENDED.has(lab.state)
    ? `Ends at ${new Date(lab.expires_at).toLocaleTimeString()}` : "";
  const live = lab.state && !ENDED.has(lab.state);
  button("launch").disabled = Boolean(live);
  button("break").disabled = lab.state !== "ready";
  button("extend").disabled = lab.state !== "ready";
  button("stop").disabled = !live;
}

function renderSteps(steps) {
  list("steps").replaceChildren(...steps.map((step) => el("li", "", step.message)));
}

function renderNodes() {
  const rows = [...nodes.values()].map((node) => {
    const row = el("tr", `node state-${node.state}`);
    row.dataset.node = node.name;
    const name = el("td", "", node.name);
    name.title = `docker exec -it ${node.container} sh`;
    row.append(name, el("td", "", node.role), el("td", "state", node.state), el("td", "container", node.container));
    return row;
  });
  list("nodes").replaceChildren(...rows);
}

function renderObjectives() {
  const items = [...objectives.values()].map((objective) => {
    const item = el("li", `objective ${objective.status}`);
    item.dataset.objective = objective.key;
    item.append(el("span", "title", objective.title), el("span", "reason", objective.reason));
    return item;
  });
  list("objectives").replaceChildren(...items);
}

function renderMetrics(metrics) {
  const show = (name, text) => { panel.querySelector(`[data-metric="${name}"]`).textContent = text; };
  show("rps", metrics.rps.toFixed(1));
  show("p50_ms", metrics.p50_ms == null ? "–" : `${metrics.p50_ms.toFixed(0)} ms`);
  show("p95_ms", metrics.p95_ms == null ? "–" : `${metrics.p95_ms.toFixed(0)} ms`);
  show("error_rate", `${(metrics.error_rate * 100).toFixed(1)} %`);
  const replicas = Object.entries(metrics.replicas).sort().map(([name, n]) => `${name}: ${n}`);
  show("replicas", replicas.join(" · ") || "none");
}

const handlers = {
  snapshot(message) {
    renderLab(message.lab);
    renderSteps(message.steps);
    nodes.clear();
    message.nodes.forEach((node) => nodes.set(node.name, node));
    renderNodes();
    objectives.clear();
    message.objectives.forEach((objective) => objectives.set(objective.key, objective));
    renderObjectives();
  },
  lab(message) {
    renderLab(message);
    if (ENDED.has(message.state) && socket) socket.close(1000);
  },
  step(message) { list("steps").append(el("li", "", message.message)); },
  node(message) { nodes.set(message.name, message); renderNodes(); },
  objective(message) { objectives.set(message.key, message); renderObjectives(); },
  metrics: renderMetrics,
  error(message) { console.warn("lab socket:", message.message); },
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
  socket.addEventListener("open", () => {
    opened = true;
    retryDelay = 500;
    field("connection").textContent = "";
  });
  socket.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    (handlers[message.type] || (() => {}))(message);
  });
  socket.addEventListener("close", async (event) => {
    if (event.target !== socket) return; // an older socket, replaced by a newer one
    socket = null;
    if (ENDED.has(labState) || event.code === 4404 || event.code === 4401) return;
    if (!opened && !(await labStillReachable())) return;
    // The figures on the page are now stale: say so, and come back with a fresh snapshot.
    field("connection").textContent = "(live updates lost, reconnecting…)";
    setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 10000);
  });
}

async function act(name, run) {
  button(name).disabled = true;
  try {
    await run();
  } catch (error) {
    field("reason").textContent = error.message;
  }
}

button("launch").addEventListener("click", () => act("launch", async () => {
  const lab = await post(panel.dataset.launchUrl);
  labId = lab.id;
  renderLab(lab);
  if (socket) socket.close(1000);
  connect();
}));
button("break").addEventListener("click", () => act("break", () => post(`${panel.dataset.apiRoot}${labId}/break`)));
button("extend").addEventListener("click", () => act("extend", async () => {
  renderLab(await post(`${panel.dataset.apiRoot}${labId}/extend`, { minutes: 30 }));
}));
button("stop").addEventListener("click", () => act("stop", () => post(`${panel.dataset.apiRoot}${labId}/stop`)));

connect();
