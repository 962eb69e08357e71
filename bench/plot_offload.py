#!/usr/bin/env python3
"""Plots bench/results/offload_capacity.csv and offload_timeline.csv into
bench/results/offload.png: throughput against load, energy per job, and
the placement timeline (which guest ran where, when) of the 4x bursts."""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
path = os.path.join(here, "offload_capacity.csv")
if not os.path.exists(path):
    sys.exit("no bench/results/offload_capacity.csv yet: run bench/offload.sh first")
rows = list(csv.DictReader(open(path)))
timeline = list(csv.DictReader(open(os.path.join(here, "offload_timeline.csv"))))
configs = ["alone", "alone_tern", "throughput", "energy"]
labels = {"alone": "server alone (plain wasmtime)", "alone_tern": "server alone (tern run, no controller)",
          "throughput": "server + 4 boards, controller",
          "energy": "server + 4 boards, --policy energy"}
loads = sorted({int(r["load"]) for r in rows})

fig, axes = plt.subplots(1, 4, figsize=(22, 4.8), gridspec_kw={"width_ratios": [1, 1, 1.4, 1.4]})
ax = axes[0]
for c in configs:
    pts = [(int(r["load"]), float(r["jobs_per_min"])) for r in rows if r["config"] == c]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=labels[c])
ax.set_xlabel("burst (x the server's capacity)")
ax.set_ylabel("throughput (jobs a minute)")
ax.set_xticks(loads)
ax.set_title("throughput against load")
ax.legend(fontsize=8)

ax = axes[1]
w = 0.2
for i, c in enumerate(configs):
    vals = [next((float(r["energy_per_job_j"]) for r in rows if r["config"] == c and int(r["load"]) == l), 0)
            for l in loads]
    ax.bar([x + (i - 1.5) * w for x in range(len(loads))], vals, w, label=labels[c])
ax.set_xticks(range(len(loads)))
ax.set_xticklabels([f"{l}x" for l in loads])
ax.set_ylabel("energy per job (J, power model)")
ax.set_title("energy per job")
ax.legend(fontsize=8)

colors = {}
palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
for k, policy in enumerate(["throughput", "energy"]):
    ax = axes[2 + k]
    seg = [t for t in timeline if t["policy"] == policy and t["jobs"] == str(max(loads))]
    guests = sorted({t["guest"] for t in seg})
    for y, g in enumerate(guests):
        for t in (t for t in seg if t["guest"] == g):
            node = t["node"]
            colors.setdefault(node, palette[len(colors) % len(palette)])
            s, e = float(t["start_s"]), float(t["end_s"])
            ax.barh(y, e - s, left=s, color=colors[node], edgecolor="black", linewidth=0.4)
            ax.text(s + (e - s) / 2, y, node, ha="center", va="center", fontsize=7)
    ax.set_yticks(range(len(guests)))
    ax.set_yticklabels(guests, fontsize=7)
    ax.set_xlabel("seconds since the burst")
    ax.set_title(f"placement, {max(loads)}x burst, --policy {policy}")
fig.suptitle("bench/offload.sh capacity testbed: server 1 CPU, four boards 0.25 CPU each (cgroup quotas), QuickJS jobs")
fig.tight_layout()
out = os.path.join(here, "offload.png")
fig.savefig(out, dpi=110)
print(out)
