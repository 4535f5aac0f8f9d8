// The lab's timeline: what happened, newest first. The snapshot brings the stored events (so a
// reload or a reconnect catches up) and `event` messages add the new ones; both are keyed by
// the event's id, so an event the page already shows is never shown twice.

import { clock, el } from "./util.js";

const LIMIT = 200; // entries kept on the page

export function createTimeline(ctx, section) {
  const list = section.querySelector("[data-timeline]");
  const empty = section.querySelector("[data-timeline-empty]");
  const events = new Map(); // id -> event

  function add(event) {
    if (!Number.isInteger(event.id) || events.has(event.id)) return false;
    events.set(event.id, event);
    return true;
  }

  function item(event) {
    const li = el("li", `event kind-${event.kind}`);
    li.dataset.id = event.id;
    li.dataset.kind = event.kind;
    const time = el("time", "at", clock(event.at));
    time.dateTime = event.at;
    time.title = new Date(event.at).toLocaleString();
    li.append(time, el("span", "kind", event.kind), el("span", "message", event.message));
    return li;
  }

  function render() {
    const newest = [...events.values()].sort((a, b) => b.id - a.id).slice(0, LIMIT);
    list.replaceChildren(...newest.map(item));
    empty.hidden = newest.length > 0;
  }

  render();
  return {
    snapshot(message) {
      if (!Array.isArray(message.timeline)) return;
      let changed = false;
      for (const event of message.timeline) changed = add(event) || changed;
      if (changed || !list.children.length) render();
    },
    event(message) {
      if (add(message)) render();
    },
    reset() {
      events.clear();
      render();
    },
  };
}
