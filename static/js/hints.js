// Hints, one at a time, and the way out: "Skip" runs the lab's solution for the learner. The
// snapshot carries the hints already shown ({"shown": [...], "total": n}), so a reload shows
// them again; it also carries the solution's text when the lab lets learners read it.

import { el, say, withCode } from "./util.js";

const CLEAR_AFTER = 15000; // ms an "ok" note stays

function note(slot, text) {
  say(slot, text, "ok");
  clearTimeout(slot.clearTimer);
  slot.clearTimer = setTimeout(() => slot.textContent === text && say(slot, ""), CLEAR_AFTER);
}

export function createHints(ctx, section) {
  const list = section.querySelector("[data-hints]");
  const count = section.querySelector("[data-hint-count]");
  const next = section.querySelector('[data-action="hint"]');
  const skip = section.querySelector('[data-action="skip"]');
  const hintStatus = section.querySelector('[data-status="hint"]');
  const skipStatus = section.querySelector('[data-status="skip"]');
  const solution = section.querySelector("[data-solution]");
  let shown = [];
  let total = Number(section.dataset.hintsTotal) || 0;
  let busy = false;

  function render() {
    list.replaceChildren(
      ...shown.map((hint, i) => {
        const item = el("li", "hint");
        item.dataset.hint = i + 1;
        item.append(...withCode(hint));
        return item;
      }),
    );
    count.textContent = total ? `${shown.length} of ${total} shown` : "";
    update();
  }

  function update() {
    const ready = ctx.labState === "ready";
    next.disabled = !ready || busy || (total > 0 && shown.length >= total);
    next.textContent = total > 0 && shown.length >= total ? "No more hints" : "Get a hint";
    skip.disabled = !ready || busy;
  }

  function take(hints) {
    if (!hints || !Array.isArray(hints.shown)) return;
    shown = hints.shown.slice();
    if (Number.isInteger(hints.total)) total = hints.total;
    render();
  }

  function showSolution(text) {
    solution.hidden = !text;
    solution.querySelector("pre").textContent = text || "";
  }

  next.addEventListener("click", async () => {
    busy = true;
    update();
    say(hintStatus, "");
    try {
      const answer = await ctx.post(ctx.url("hints/next"));
      if (Number.isInteger(answer.total)) total = answer.total;
      if (answer.hint && !shown.includes(answer.hint)) shown.push(answer.hint);
    } catch (error) {
      say(hintStatus, error.message);
    } finally {
      busy = false;
      render();
    }
  });

  skip.addEventListener("click", async () => {
    if (!confirm("Skip this exercise? The lab's solution will be run on the lab for you.")) return;
    busy = true;
    update();
    say(skipStatus, "");
    try {
      await ctx.post(ctx.url("skip"));
      note(skipStatus, "Running the solution: watch the timeline and the objectives.");
      ctx.refresh(); // the snapshot may now carry the solution's text
    } catch (error) {
      say(skipStatus, error.message);
    } finally {
      busy = false;
      update();
    }
  });

  render();
  return {
    snapshot(message) {
      take(message.hints);
      if ("solution" in message) showSolution(message.solution);
    },
    // Not sent by the server today: a live `hints` message (same shape as the snapshot's) would
    // keep a second tab in step.
    hints: take,
    lab: update,
    reset() {
      shown = [];
      showSolution(null);
      say(hintStatus, "");
      say(skipStatus, "");
      render();
    },
  };
}
