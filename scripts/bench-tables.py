#!/usr/bin/env python3
"""Turns the JSON lines of scripts/bench-matrix.sh into the Markdown tables of
docs/benchmarks.md: each figure is the median of the runs with the same label
and system, with the load generator's CPU (median) next to it."""
import json
import statistics
import sys
from collections import defaultdict

SYSTEMS = ["crier", "crier-redis", "redis", "nats"]
NAMES = {"crier": "crier embedded", "crier-redis": "crier on Redis", "redis": "Redis direct", "nats": "NATS direct"}

runs = defaultdict(list)
for line in open(sys.argv[1] if len(sys.argv) > 1 else "target/bench-results.jsonl"):
    record = json.loads(line)
    runs[(record["label"], record["system"])].append(record)


def median(label, system, field):
    values = [r[field] for r in runs[(label, system)] if r.get(field) is not None]
    return statistics.median(values) if values else None


def cell(label, system, field, scale=1.0, fmt="{:.2f}"):
    value = median(label, system, field)
    if value is None:
        return "n/a"
    cpu = median(label, system, "bench_cpu_pct")
    n = len(runs[(label, system)])
    return f"{fmt.format(value * scale)} ({cpu:.0f}%, n={n})"


print("## Fan-out: deliveries per second (millions; load generator CPU; runs)\n")
for size in (64, 1024):
    print(f"\n{size} B messages\n")
    print("| subscribers | " + " | ".join(NAMES[s] for s in SYSTEMS) + " | crier ÷ best rival | crier on Redis ÷ best rival |")
    print("|---|" + "---|" * (len(SYSTEMS) + 2))
    for subs in (1, 100, 1000, 10000):
        label = f"fanout-s{subs}-b{size}"
        cells = [cell(label, s, "deliveries_per_s", 1e-6) for s in SYSTEMS]
        best = max(median(label, s, "deliveries_per_s") or 0 for s in ("redis", "nats"))
        ratio = lambda s: f"{(median(label, s, 'deliveries_per_s') or 0) / best:.2f}×" if best else "n/a"
        print(f"| {subs:,} | " + " | ".join(cells) + f" | {ratio('crier')} | {ratio('crier-redis')} |")

print("\n## Latency publish → deliver, 1,000 subscribers (µs: p50 / p99 / p99.9 / max)\n")
print("| rate | " + " | ".join(NAMES[s] for s in SYSTEMS) + " |")
print("|---|" + "---|" * len(SYSTEMS))
for rate in (100, 1000):
    label = f"latency-r{rate}"
    cells = []
    for s in SYSTEMS:
        figures = [median(label, s, f) for f in ("latency_p50_us", "latency_p99_us", "latency_p999_us", "latency_max_us")]
        cpu = median(label, s, "bench_cpu_pct")
        cells.append("n/a" if None in figures else " / ".join(f"{v:,.0f}" for v in figures) + f" ({cpu:.0f}%)")
    print(f"| {rate} msg/s | " + " | ".join(cells) + " |")

print("\n## Memory per idle subscribed connection (bytes of server RSS) and one broadcast to all\n")
print("| connections | " + " | ".join(NAMES[s] for s in SYSTEMS) + " |")
print("|---|" + "---|" * len(SYSTEMS))
for conns in (1000, 5000, 15000):
    label = f"conns-c{conns}"
    cells = []
    for s in SYSTEMS:
        per_conn = median(label, s, "server_rss_bytes_per_conn")
        broadcast = median(label, s, "broadcast_us")
        cells.append("n/a" if per_conn is None else f"{per_conn:,.0f} B; broadcast {broadcast / 1000:.1f} ms")
    print(f"| {conns:,} | " + " | ".join(cells) + " |")
