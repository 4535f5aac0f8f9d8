// The idle stop: a lab nobody works in is stopped after the spec's `idle_minutes`. Working on the
// page (keys, clicks) tells the server at most once a minute; typing in a terminal counts on the
// server side. Five minutes before an idle stop a banner offers "I'm still here".

import { duration, say } from "./util.js";

const WARN_AT = 300; // seconds before the idle stop
const REPORT_EVERY = 60_000; // ms between two "still working" reports from page activity

export function createIdle(ctx, panel) {
  const banner = panel.querySelector("[data-idle-warning]");
  const left = banner.querySelector("[data-idle-left]");
  const button = banner.querySelector('[data-action="still-here"]');
  const status = banner.querySelector('[data-status="still-here"]');
  let deadline = null; // ms on this page's clock
  let lastReport = 0;

  function tick() {
    if (deadline === null || ctx.labState !== "ready") {
      banner.hidden = true;
      return;
    }
    const seconds = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
    banner.hidden = seconds > WARN_AT;
    left.textContent = seconds > 0
      ? `No activity for a while: this lab stops in ${duration(seconds)}.`
      : "No activity: the lab is being stopped.";
  }

  async function stillHere() {
    lastReport = Date.now();
    const lab = await ctx.post(ctx.url("active"));
    deadline = Date.now() + lab.idle_seconds_left * 1000;
    tick();
  }

  button.addEventListener("click", async () => {
    button.disabled = true;
    say(status, "");
    try {
      await stillHere();
    } catch (error) {
      say(status, error.message);
    } finally {
      button.disabled = false;
    }
  });

  // Reading and clicking around the page is work too; report it, but rarely.
  for (const type of ["keydown", "pointerdown"]) {
    document.addEventListener(type, () => {
      if (ctx.labState === "ready" && Date.now() - lastReport > REPORT_EVERY) stillHere().catch(() => {});
    }, { passive: true });
  }

  setInterval(tick, 1000);
  return {
    lab(lab) {
      deadline = Number.isFinite(lab.idle_seconds_left) ? Date.now() + lab.idle_seconds_left * 1000 : null;
      tick();
    },
    reset() {
      deadline = null;
      tick();
    },
  };
}
