// Small helpers shared by the lab page's modules: building DOM/SVG, clock times, JSON POSTs.

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

// Text with `code` spans, built as DOM (never as HTML): hints, question explanations.
export function withCode(text) {
  const parts = String(text).split("`");
  return parts.map((part, i) => (i % 2 ? el("code", "", part) : document.createTextNode(part)));
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, String(value));
  }
  if (text !== undefined) node.textContent = text;
  return node;
}

const pad = (n) => String(n).padStart(2, "0");

// "14:03:07", in the learner's time zone.
export function clock(value) {
  const moment = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(moment.getTime())) return "--:--:--";
  return `${pad(moment.getHours())}:${pad(moment.getMinutes())}:${pad(moment.getSeconds())}`;
}

// "4:05" or "1:02:03" for a number of seconds.
export function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

// POST JSON with Django's CSRF header. Resolves to the JSON answer; rejects with an Error whose
// message is the API's {"error": "..."} text, or the HTTP status when the answer is not JSON.
export async function postJSON(url, csrf, body = {}) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
    body: JSON.stringify(body),
  });
  const payload = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error((payload && payload.error) || `HTTP ${response.status} ${response.statusText}`.trim());
    error.status = response.status;
    throw error;
  }
  return payload || {};
}

// Show `text` in an inline error/status slot; an empty text clears it.
export function say(slot, text, kind = "error") {
  if (!slot) return;
  slot.textContent = text || "";
  slot.classList.toggle("error", kind === "error" && Boolean(text));
  slot.classList.toggle("ok", kind === "ok" && Boolean(text));
}
