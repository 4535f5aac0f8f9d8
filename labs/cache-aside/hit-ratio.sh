#!/bin/sh
# Check of the objective "hit-ratio", run inside traffic (as user traffic). Reads the cache
# counters of both app replicas (GET /stats) twice, 2 seconds apart, and prints the share of the
# reads in between that Redis answered: "cache hit ratio N % (H of R reads)". Exits 1 below 80 %
# or with fewer than 5 reads to judge.
set -u

sample() {
    for replica in app-1 app-2; do
        # One JSON object per line; a replica that does not answer counts as no reads.
        curl -fsS --max-time 1 "http://$replica:8080/stats" || echo '{}'
        echo
    done
}

before=$(sample)
sleep 2
after=$(sample)

python3 - "$before" "$after" <<'PY'
import json, sys

def totals(text):
    hits = reads = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        stats = json.loads(line)
        hits += stats.get("cache_hits", 0)
        reads += stats.get("cache_hits", 0) + stats.get("cache_misses", 0) + stats.get("cache_errors", 0)
    return hits, reads

h0, r0 = totals(sys.argv[1])
h1, r1 = totals(sys.argv[2])
hits, reads = max(h1 - h0, 0), max(r1 - r0, 0)
if reads < 5:
    print(f"only {reads} reads in 2 s: not enough to judge")
    sys.exit(1)
ratio = 100 * hits // reads
print(f"cache hit ratio {ratio} % ({hits} of {reads} reads in 2 s)")
sys.exit(0 if ratio >= 80 else 1)
PY
