// The fault panel: one button per fault of the lab (from the snapshot's `faults`), plus restarting
// one node and resetting the whole lab. Each control shows its outcome (or the API's error)
// right beside it; what the fault then does shows up in the topology, charts and timeline.

import { el, say } from "./util.js";

const CLEAR_AFTER = 8000; // ms an "ok" note stays

export function createFaults(ctx, section) {
  const list = section.querySelector("[data-faults]");
  const empty = section.querySelector("[data-faults-empty]");
  const select = section.querySelector("[data-restart-node]");
  const restart = section.querySelector('[data-action="restart"]');
  const reset = section.querySelector('[data-action="reset"]');
  const busy = new Set(); // controls waiting for an answer

  const ready = () => ctx.labState === "ready";

  function note(slot, text) {
    say(slot, text, "ok");
    clearTimeout(slot.clearTimer);
    slot.clearTimer = setTimeout(() => slot.textContent === text && say(slot, ""), CLEAR_AFTER);
  }

  // POST from a control, keeping it disabled while the request runs.
  async function run(control, slot, url, done) {
    busy.add(control);
    control.disabled = true;
    say(slot, "");
    try {
      await ctx.post(url);
      note(slot, done);
    } catch (error) {
      say(slot, error.message);
    } finally {
      busy.delete(control);
      update();
    }
  }

  function renderFaults(faults) {
    const items = faults.map((fault) => {
      const item = el("li", "fault");
      const trigger = el("button", "", fault.title);
      trigger.type = "button";
      trigger.dataset.fault = fault.key;
      const status = el("span", "inline-status");
      status.dataset.faultStatus = fault.key;
      status.setAttribute("role", "status");
      item.append(trigger, el("span", "muted", ` on ${fault.node}`), status, el("p", "description", fault.description));
      return item;
    });
    list.replaceChildren(...items);
    if (empty) empty.hidden = faults.length > 0;
  }

  function renderNodeChoices() {
    const chosen = select.value;
    const names = [...ctx.nodes.keys()];
    if (names.join() === [...select.options].map((option) => option.value).join()) {
      // Same nodes: only their states changed; keep the options (and an open drop-down) in place.
      for (const option of select.options) option.textContent = `${option.value} (${ctx.nodes.get(option.value).state})`;
      return;
    }
    const options = names.map((name) => {
      const option = el("option", "", `${name} (${ctx.nodes.get(name).state})`);
      option.value = name;
      return option;
    });
    select.replaceChildren(...options);
    if (names.includes(chosen)) select.value = chosen;
  }

  function update() {
    for (const trigger of list.querySelectorAll("[data-fault]")) trigger.disabled = !ready() || busy.has(trigger);
    select.disabled = !ready() || !ctx.nodes.size;
    restart.disabled = select.disabled || busy.has(restart);
    reset.disabled = !ready() || busy.has(reset);
  }

  list.addEventListener("click", (event) => {
    const trigger = event.target.closest("[data-fault]");
    if (!trigger || trigger.disabled) return;
    const key = trigger.dataset.fault;
    const slot = list.querySelector(`[data-fault-status="${CSS.escape(key)}"]`);
    run(trigger, slot, ctx.url(`faults/${encodeURIComponent(key)}`), "Queued: watch the timeline.");
  });
  restart.addEventListener("click", () => {
    const node = select.value;
    if (!node) return;
    run(restart, section.querySelector('[data-status="restart"]'), ctx.url(`nodes/${encodeURIComponent(node)}/restart`), `Restarting ${node}…`);
  });
  reset.addEventListener("click", () => {
    if (!confirm("Reset the lab? Every node goes back to how it was at launch; changes you made inside the nodes are lost.")) return;
    run(reset, section.querySelector('[data-status="reset"]'), ctx.url("reset"), "Resetting the lab…");
  });

  update();
  return {
    snapshot(message) {
      if (Array.isArray(message.faults)) renderFaults(message.faults);
      renderNodeChoices();
      update();
    },
    lab: update,
    node() {
      renderNodeChoices();
      update();
    },
    reset() {
      renderNodeChoices();
      update();
    },
  };
}
