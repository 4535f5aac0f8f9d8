"""Benchmark of the lab page: time from a fault to the page's first update about it, measured in
the browser (Debian's Chromium via Playwright), not only on the socket.

Each round clicks the fault panel's "Kill replica app-2" and measures, inside the page, the time
from the click to the node table showing app-2 down; then restarts app-2 from the controls and
measures the time until the page shows it healthy again. Prints every round, then median and p95.

Needs a running Stacklab: `make bench-page` starts one (`make run` on its own port, run directory
and engine label), runs this, and stops it. Or: `python bench/page_latency.py --url URL`.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from playwright.sync_api import Page, sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Runs in the page: start a clock, click, and resolve when the node's row shows the state.
MEASURE = """
([selector, node, state]) => new Promise((resolve) => {
  const wanted = () => document.querySelector(`tr[data-node="${node}"].state-${state}`);
  const started = performance.now();
  const observer = new MutationObserver(() => {
    if (wanted()) { observer.disconnect(); resolve(performance.now() - started); }
  });
  observer.observe(document.body, {subtree: true, childList: true, attributes: true});
  document.querySelector(selector).click();
})
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def launch(page: Page, url: str, username: str, password: str) -> None:
    page.goto(f"{url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.goto(f"{url}/lessons/load-balancing/")
    if not page.locator("[data-action=launch]").is_disabled():
        page.click("[data-action=launch]")
    page.wait_for_function(
        "document.querySelector('[data-field=state]').textContent.trim() === 'ready'", timeout=180_000
    )
    page.wait_for_selector("tr[data-node=app-2].state-healthy", timeout=60_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="a running Stacklab, e.g. http://127.0.0.1:8000")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--user", default="learner")
    parser.add_argument("--password", default="stacklab-demo")
    options = parser.parse_args()

    down, up = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        launch(page, options.url, options.user, options.password)
        page.select_option("[data-restart-node]", "app-2")
        for round_number in range(1, options.rounds + 1):
            down.append(page.evaluate(MEASURE, ["[data-fault=kill-app-2]", "app-2", "down"]))
            up.append(page.evaluate(MEASURE, ["[data-action=restart]", "app-2", "healthy"]))
            print(
                f"round {round_number}: kill -> page shows down {down[-1]:7.0f} ms   "
                f"restart -> page shows healthy {up[-1]:7.0f} ms",
                flush=True,
            )
        page.click("[data-action=stop]")
        browser.close()

    print()
    print(f"fault to first page update, {options.rounds} rounds (measured in Chromium)")
    print(
        f"  kill replica -> node shown down:     median {statistics.median(down):6.0f} ms   "
        f"p95 {percentile(down, 0.95):6.0f} ms"
    )
    print(
        f"  restart -> node shown healthy again: median {statistics.median(up):6.0f} ms   "
        f"p95 {percentile(up, 0.95):6.0f} ms"
    )


if __name__ == "__main__":
    sys.exit(main())
