// Terminals on the lab's nodes, in a dock below the page: one tab per node (several at once, or
// side by side), each an xterm.js terminal over its own WebSocket:
//
//   ws(s)://HOST/ws/labs/<lab id>/terminals/<node>/?cols=C&rows=R
//
// Keystrokes and pastes go up as BINARY frames (UTF-8); a resize goes up as TEXT
// {"type": "resize", "cols": C, "rows": R}. The server sends BINARY frames of TTY output and TEXT
// frames {"type": "exit", "code": N | null, "reason"?} and {"type": "error", "message"}; close
// code 4410 means the lab stopped. A refused handshake arrives as a bare close. Whatever ends a
// session is written into the terminal as a line of its own; closing a tab closes its socket.

import { FitAddon } from "@xterm/addon-fit";
import { Terminal } from "@xterm/xterm";

import { el } from "./util.js";

const CLOSE_LAB_STOPPED = 4410;
const ENDS = new Set(["exited", "ended", "closed", "refused"]); // statuses after which Reconnect opens a new shell
const encoder = new TextEncoder();

const THEME = {
  background: "#0d1117",
  foreground: "#e6edf3",
  cursor: "#2f81f7",
  selectionBackground: "#264f78",
  black: "#484f58",
  red: "#ff7b72",
  green: "#3fb950",
  yellow: "#d29922",
  blue: "#58a6ff",
  magenta: "#bc8cff",
  cyan: "#39c5cf",
  white: "#b1bac4",
};

const line = (colour, text) => `\r\n\x1b[${colour}m${text}\x1b[0m\r\n`;
const DIM = "2";
const YELLOW = "33";
const RED = "31";

export function createTerminals(ctx, dock) {
  const tabs = dock.querySelector("[data-terminal-tabs]");
  const panes = dock.querySelector("[data-terminal-panes]");
  const splitButton = dock.querySelector('[data-dock="split"]');
  const hideButton = dock.querySelector('[data-dock="hide"]');
  const sessions = new Map(); // node name -> session
  let active = null;

  function session(node) {
    const labId = ctx.labId;
    const tab = el("div", "terminal-tab");
    tab.dataset.terminalTab = node;
    const label = el("button", "tab-label");
    label.type = "button";
    label.setAttribute("role", "tab");
    const tabStatus = el("span", "status", "connecting");
    label.append(el("span", "name", node), tabStatus);
    const close = el("button", "tab-close", "×");
    close.type = "button";
    close.dataset.terminalClose = node;
    close.title = `Close the terminal on ${node}`;
    close.setAttribute("aria-label", close.title);
    tab.append(label, close);

    const pane = el("section", "terminal");
    pane.dataset.node = node;
    pane.setAttribute("role", "tabpanel");
    pane.setAttribute("aria-label", `Terminal on ${node}`);
    const paneStatus = el("span", "status muted", "connecting");
    const reconnect = el("button", "small", "Reconnect");
    reconnect.type = "button";
    reconnect.hidden = true;
    const head = el("header", "terminal-head");
    head.append(el("strong", "", node), paneStatus, reconnect);
    const screen = el("div", "screen");
    pane.append(head, screen);
    tabs.append(tab);
    panes.append(pane);

    const term = new Terminal({
      cursorBlink: true,
      fontSize: 13,
      fontFamily: 'ui-monospace, "DejaVu Sans Mono", "Cascadia Mono", Menlo, monospace',
      scrollback: 5000,
      theme: THEME,
    });
    const fit = new FitAddon();
    term.loadAddon(fit);

    let socket = null;
    let status = "connecting";
    let disposed = false;

    const offerReconnect = () => {
      reconnect.hidden = !ENDS.has(status) || ctx.labState !== "ready";
    };
    function setStatus(value, text = value) {
      const over = ENDS.has(value);
      if (over !== ENDS.has(status) || value === "connecting") {
        term.options.disableStdin = over;
        term.options.cursorBlink = !over;
        term.write(over ? "\x1b[?25l" : "\x1b[?25h"); // no cursor in a shell that is gone
      }
      status = value;
      pane.dataset.status = value;
      tab.dataset.status = value;
      tabStatus.textContent = text;
      paneStatus.textContent = text;
      offerReconnect();
    }

    const isOpen = () => socket && socket.readyState === WebSocket.OPEN;
    function sendResize() {
      if (isOpen()) socket.send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
    }
    function refit() {
      if (disposed || !screen.clientWidth || !screen.clientHeight) return; // hidden tab: fit when shown
      try {
        fit.fit(); // fires onResize (→ a resize frame) when the size changed
      } catch (error) {
        // not rendered yet
      }
    }

    function control(message) {
      if (message.type === "exit") {
        if (message.code === null || message.code === undefined) {
          // The lab stopped, or the node could not give a shell (down, paused, gone).
          term.write(line(YELLOW, `[${message.reason || "The server ended this terminal."}]`));
          setStatus("ended");
        } else {
          const signal = message.code > 128 ? `, killed by signal ${message.code - 128}` : "";
          term.write(line(DIM, `[The shell on ${node} ended with exit code ${message.code}${signal}.]`));
          setStatus("exited", `exited (${message.code})`);
        }
      } else if (message.type === "error") {
        term.write(line(RED, `[Error: ${message.message}]`));
      }
    }

    function connect() {
      refit();
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      const url = `${scheme}://${location.host}/ws/labs/${labId}/terminals/${encodeURIComponent(node)}/?cols=${term.cols}&rows=${term.rows}`;
      const current = new WebSocket(url);
      current.binaryType = "arraybuffer";
      socket = current;
      let opened = false;
      setStatus("connecting");
      current.addEventListener("open", () => {
        opened = true;
        setStatus("open", "connected");
        sendResize(); // the size may have changed while connecting
        if (active === node) term.focus();
      });
      current.addEventListener("message", (event) => {
        if (typeof event.data === "string") {
          try {
            control(JSON.parse(event.data));
          } catch (error) {
            console.warn("terminal: unreadable control frame", event.data);
          }
        } else {
          term.write(new Uint8Array(event.data));
        }
      });
      current.addEventListener("close", (event) => {
        if (disposed || current !== socket) return;
        socket = null;
        if (event.code === CLOSE_LAB_STOPPED) {
          if (status !== "ended") term.write(line(YELLOW, "[The lab is stopped.]")); // else the exit frame said why
          setStatus("ended", "the lab is stopped");
          return;
        }
        if (status === "ended" || status === "exited") return; // already explained by the exit frame
        if (!opened) {
          const why = ctx.labState === "ready" ? "the server refused it (is the node running? are you still logged in?)" : "the lab is not running";
          term.write(line(RED, `[Could not open a terminal on ${node}: ${why}.]`));
          setStatus("refused");
        } else {
          term.write(line(YELLOW, `[Connection to ${node} closed${event.code && event.code !== 1000 ? ` (code ${event.code})` : ""}. Reconnect opens a new shell.]`));
          setStatus("closed");
        }
      });
    }

    term.onData((data) => {
      if (isOpen()) socket.send(encoder.encode(data));
    });
    term.onBinary((data) => {
      if (isOpen()) socket.send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff));
    });
    term.onResize(sendResize);

    let pending = 0;
    const observer = new ResizeObserver(() => {
      cancelAnimationFrame(pending);
      pending = requestAnimationFrame(refit);
    });

    reconnect.addEventListener("click", () => {
      term.write(line(DIM, "[Opening a new shell…]"));
      connect();
    });
    label.addEventListener("click", () => activate(node));
    close.addEventListener("click", () => closeSession(node));

    const self = {
      node,
      tab,
      pane,
      label,
      get status() {
        return status;
      },
      start() {
        term.open(screen);
        observer.observe(screen);
        connect();
      },
      refit,
      focus: () => term.focus(),
      reconnect: () => reconnect.click(),
      labChanged: offerReconnect,
      dispose() {
        disposed = true;
        observer.disconnect();
        if (socket) socket.close(1000);
        socket = null;
        term.dispose();
        tab.remove();
        pane.remove();
      },
    };
    return self;
  }

  function layout() {
    dock.hidden = sessions.size === 0;
    document.body.classList.toggle("has-terminals", sessions.size > 0);
    for (const s of sessions.values()) {
      const selected = s.node === active;
      s.tab.classList.toggle("active", selected);
      s.label.setAttribute("aria-selected", String(selected));
      s.pane.classList.toggle("active", selected);
    }
    requestAnimationFrame(() => sessions.forEach((s) => s.refit()));
  }

  function activate(node) {
    active = node;
    dock.classList.remove("minimised");
    hideButton.textContent = "Hide";
    hideButton.setAttribute("aria-expanded", "true");
    layout();
    sessions.get(node)?.focus();
  }

  function open(node) {
    if (!ctx.labId) return;
    const existing = sessions.get(node);
    if (existing) {
      activate(node);
      if (ENDS.has(existing.status) && ctx.labState === "ready") existing.reconnect();
      return;
    }
    const s = session(node);
    sessions.set(node, s);
    active = node;
    dock.hidden = false;
    layout();
    s.start();
    activate(node);
    dock.scrollIntoView({ block: "nearest" });
  }

  function closeSession(node) {
    const s = sessions.get(node);
    if (!s) return;
    s.dispose();
    sessions.delete(node);
    if (active === node) active = [...sessions.keys()].pop() || null;
    layout();
  }

  splitButton.addEventListener("click", () => {
    const split = dock.classList.toggle("split");
    splitButton.setAttribute("aria-pressed", String(split));
    layout();
  });
  hideButton.addEventListener("click", () => {
    const hidden = dock.classList.toggle("minimised");
    hideButton.textContent = hidden ? "Show" : "Hide";
    hideButton.setAttribute("aria-expanded", String(!hidden));
    layout();
  });
  // Keep the page's sticky panel clear of the dock.
  new ResizeObserver(() => {
    document.documentElement.style.setProperty("--dock-h", `${dock.hidden ? 0 : dock.offsetHeight}px`);
  }).observe(dock);

  return {
    open,
    close: closeSession,
    lab() {
      sessions.forEach((s) => s.labChanged()); // Reconnect is offered only while the lab runs
    },
    reset() {
      [...sessions.keys()].forEach(closeSession);
    },
  };
}
