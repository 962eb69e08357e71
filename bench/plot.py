#!/usr/bin/env python3
"""Plots bench/results/migrate_*.csv into bench/results/migrate.png:
downtime, total time and bytes/touched per memory size and dirty rate,
cold, pre-copy and post-copy (those measured), for each link (loopback, veth)."""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
links = [l for l in ("loopback", "veth") if os.path.exists(os.path.join(here, f"migrate_{l}.csv"))]
if not links:
    sys.exit("no bench/results/migrate_*.csv yet: run bench/migrate.sh first")

metrics = [("downtime_ms", "downtime (ms, log)", True), ("total_ms", "total time (ms, log)", True),
           ("bytes_over_touched", "bytes sent / touched memory", False)]
fig, axes = plt.subplots(len(links), len(metrics), figsize=(15, 4.2 * len(links)), squeeze=False)
for row, link in enumerate(links):
    with open(os.path.join(here, f"migrate_{link}.csv")) as f:
        rows = list(csv.DictReader(f))
    labels = sorted({(int(r["mem_mib"]), int(r["dirty_mb_s"])) for r in rows})
    xs = range(len(labels))
    strategies = [s for s in ("cold", "precopy", "postcopy") if any(r["strategy"] == s for r in rows)]
    width = 0.8 / len(strategies)
    for col, (key, title, log) in enumerate(metrics):
        ax = axes[row][col]
        for i, strategy in enumerate(strategies):
            vals = []
            for lab in labels:
                v = [float(r[key]) for r in rows
                     if (int(r["mem_mib"]), int(r["dirty_mb_s"])) == lab and r["strategy"] == strategy]
                vals.append(v[0] if v else 0)
            offset = (i - (len(strategies) - 1) / 2) * width
            ax.bar([x + offset for x in xs], vals, width=width, label=strategy)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"{m}M\n{d}MB/s" for m, d in labels], fontsize=7)
        ax.set_title(f"{link}: {title}")
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
fig.tight_layout()
out = os.path.join(here, "migrate.png")
fig.savefig(out, dpi=90)
print(out)
