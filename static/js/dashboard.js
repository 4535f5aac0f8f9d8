// The cohort dashboard, live: the progress matrix (learner × lesson) and the labs running now,
// followed over ws(s)://HOST/ws/cohorts/<id>/.
//
// The server renders the page from the same snapshot this module draws, so without the socket
// (or without JavaScript) it stays readable, marked "not live". The socket sends a `snapshot` when
// it (re)connects, which redraws everything, then `lab` and `objective` messages; each carries
// the learner's matrix cell for that lesson as the server now judges it (`cell`), so this page
// never re-derives a lesson's status. A reconnect backs off up to 10 s and starts from a fresh
// snapshot, so nothing missed while away stays missing.

import { el } from "./util.js";

const root = document.getElementById("dashboard");
const csrf = root.querySelector("input[name=csrfmiddlewaretoken]").value;
const connection = root.querySelector("[data-connection]");
const runningBody = root.querySelector("[data-running]");
const runningCount = root.querySelector("[data-running-count]");
const matrixBody = root.querySelector("[data-matrix]");
const LIVE_STATES = new Set(["requested", "provisioning", "ready"]);

let lessons = []; // [{slug, title, has_lab}] in course order
let learners = new Map(); // id -> {id, username, cells}
let labs = new Map(); // lab id -> lab message
let socket = null;
let retryDelay = 500;

const hhmm = (iso) => (iso ? new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }) : "–");
const labUrl = (template, labId) => template.replace("LAB_ID", encodeURIComponent(labId));
const lessonTitle = (slug) => lessons.find((lesson) => lesson.slug === slug)?.title ?? slug;

function setLive(state, text) {
  root.dataset.live = state;
  connection.textContent = text;
}

// -- the matrix ------------------------------------------------------------------------------

function fillCell(td, cell) {
  td.className = `cell status-${cell.status}`;
  td.dataset.lesson = cell.lesson;
  td.dataset.status = cell.status;
  td.dataset.met = cell.objectives.filter((objective) => objective.first_met_at).map((objective) => objective.key).join(" ");
  td.title = cell.summary;
  const parts = [el("span", "label", cell.label)];
  if (cell.total) parts.push(document.createTextNode(" "), el("span", "count", `${cell.passed}/${cell.total}`));
  td.replaceChildren(...parts);
}

function renderMatrix() {
  if (!learners.size) {
    const td = el("td", "muted", "No learners in this cohort yet.");
    td.colSpan = lessons.length + 1;
    const row = el("tr", "empty");
    row.append(td);
    matrixBody.replaceChildren(row);
    return;
  }
  const rows = [...learners.values()].map((learner) => {
    const row = el("tr");
    row.dataset.learner = learner.id;
    const name = el("th", "", learner.username);
    name.scope = "row";
    row.append(name);
    for (const cell of learner.cells) {
      const td = el("td");
      fillCell(td, cell);
      row.append(td);
    }
    return row;
  });
  matrixBody.replaceChildren(...rows);
}

// A live message's cell: replace the one shown. An unknown learner (enrolled since the snapshot)
// or lesson (content reloaded) means the page is behind: ask for a fresh snapshot.
function updateCell(cell) {
  const learner = learners.get(cell.learner);
  const index = learner ? learner.cells.findIndex((known) => known.lesson === cell.lesson) : -1;
  if (index < 0) {
    requestSnapshot();
    return;
  }
  learner.cells[index] = cell;
  const td = matrixBody.querySelector(`tr[data-learner="${cell.learner}"] td[data-lesson="${CSS.escape(cell.lesson)}"]`);
  if (td) fillCell(td, cell);
}

// -- running labs ----------------------------------------------------------------------------

function runningRow(lab) {
  const row = el("tr");
  row.dataset.lab = lab.lab_id;
  row.dataset.learner = lab.learner;
  row.dataset.lesson = lab.lesson;
  const watch = el("a", "", "Watch");
  watch.href = labUrl(root.dataset.watchUrl, lab.lab_id);
  watch.dataset.watch = "";
  const form = el("form", "inline");
  form.method = "post";
  form.action = labUrl(root.dataset.stopUrl, lab.lab_id);
  form.dataset.confirm = `Stop ${lab.username}'s lab?`;
  const token = el("input");
  token.type = "hidden";
  token.name = "csrfmiddlewaretoken";
  token.value = csrf;
  const stop = el("button", "small", "Stop");
  stop.type = "submit";
  stop.dataset.stop = "";
  form.append(token, stop);
  const actions = el("td", "actions");
  actions.append(watch, document.createTextNode(" "), form);
  row.append(
    el("td", "", lab.username),
    el("td", "", lessonTitle(lab.lesson)),
    el("td", `state state-${lab.state}`, lab.state),
    el("td", "", hhmm(lab.since)),
    el("td", "", hhmm(lab.expires_at)),
    actions,
  );
  return row;
}

function renderRunning() {
  const shown = [...labs.values()].sort((a, b) => (a.since || "").localeCompare(b.since || ""));
  runningCount.textContent = `(${shown.length})`;
  if (!shown.length) {
    const td = el("td", "muted", "No labs running.");
    td.colSpan = 6;
    const row = el("tr", "empty");
    row.append(td);
    runningBody.replaceChildren(row);
    return;
  }
  runningBody.replaceChildren(...shown.map(runningRow));
}

// -- messages --------------------------------------------------------------------------------

const handlers = {
  snapshot(message) {
    lessons = message.lessons;
    learners = new Map(message.learners.map((learner) => [learner.id, learner]));
    labs = new Map(message.labs.map((lab) => [lab.lab_id, lab]));
    renderMatrix();
    renderRunning();
  },
  lab(message) {
    const { cell, ...lab } = message;
    if (LIVE_STATES.has(lab.state)) labs.set(lab.lab_id, lab);
    else labs.delete(lab.lab_id);
    renderRunning();
    if (cell) updateCell(cell);
  },
  objective(message) {
    if (message.cell) updateCell(message.cell);
  },
  error(message) {
    console.warn("dashboard socket:", message.message);
  },
  pong() {},
};

function requestSnapshot() {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "snapshot" }));
}

// A refused handshake reaches the browser as a bare close (the server's 4401/4404 are lost on the
// way): ask the page itself whether it is still ours before trying again.
async function stillAllowed() {
  try {
    const response = await fetch(location.pathname, { headers: { Accept: "text/html" } });
    if (response.status === 404 || response.redirected) {
      setLive("false", response.status === 404 ? "This dashboard is not available to you." : "Log in again to follow this cohort.");
      return false;
    }
  } catch (error) {
    // The server itself is away: keep retrying.
  }
  return true;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}${root.dataset.socketPath}`);
  let opened = false;
  let heard = false;
  socket.addEventListener("open", () => {
    opened = true;
  });
  socket.addEventListener("message", (event) => {
    // The first message, not the open, ends the backoff and shows "live" (see lab.js: 4503
    // while Redis is away).
    if (!heard) {
      heard = true;
      retryDelay = 500;
      setLive("true", "live");
    }
    const message = JSON.parse(event.data);
    const handle = handlers[message.type];
    if (!handle) return;
    try {
      handle(message);
    } catch (error) {
      console.error(`dashboard: ${message.type} handler failed`, error);
    }
  });
  socket.addEventListener("close", async (event) => {
    if (event.target !== socket) return;
    socket = null;
    setLive("false", "reconnecting…");
    if (event.code === 4404 || event.code === 4401) return;
    if (!opened && !(await stillAllowed())) return;
    setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 10000);
  });
}

// Stopping a learner's lab is a plain form POST (it works without JavaScript); ask first.
root.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !confirm(form.dataset.confirm)) event.preventDefault();
});

handlers.snapshot(JSON.parse(document.getElementById("dashboard-snapshot").textContent));
setLive("false", "connecting…");
connect();
