// The lab's remaining time: "Ends at 10:14:03 · 54:12 left", and five minutes before the end a
// warning banner with an "Extend 30 min" button. The countdown runs on the page's clock from the
// server's `seconds_left`, so a wrong clock on the learner's machine does not shift it.

import { clock, duration, say } from "./util.js";

const WARN_AT = 300; // seconds before the end
const LIVE = new Set(["requested", "provisioning", "ready"]);

export function createExpiry(ctx, panel) {
  const line = panel.querySelector('[data-field="expiry"]');
  const banner = panel.querySelector("[data-expiry-warning]");
  const left = banner.querySelector("[data-expiry-left]");
  const extend = banner.querySelector('[data-action="extend-soon"]');
  const status = banner.querySelector('[data-status="extend-soon"]');
  let deadline = null; // ms on this page's clock

  function tick() {
    if (deadline === null) {
      line.textContent = "";
      banner.hidden = true;
      return;
    }
    const seconds = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
    line.textContent = `Ends at ${clock(new Date(deadline))} · ${duration(seconds)} left`;
    line.dataset.secondsLeft = seconds;
    banner.hidden = seconds > WARN_AT;
    left.textContent = seconds > 0 ? `This lab ends in ${duration(seconds)}.` : "Time is up: the lab is being stopped.";
    extend.disabled = seconds === 0 || ctx.labState !== "ready";
  }

  extend.addEventListener("click", async () => {
    extend.disabled = true;
    say(status, "");
    try {
      await ctx.extend(); // redraws the panel (and this countdown) from the answer
    } catch (error) {
      say(status, error.message);
    }
  });

  setInterval(tick, 1000);
  return {
    lab(lab) {
      if (!lab.expires_at || !LIVE.has(lab.state)) deadline = null;
      else if (Number.isFinite(lab.seconds_left)) deadline = Date.now() + lab.seconds_left * 1000;
      else deadline = Date.parse(lab.expires_at);
      say(status, "");
      tick();
    },
    reset() {
      deadline = null;
      tick();
    },
  };
}
