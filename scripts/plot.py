#!/usr/bin/env python3
"""Turns benchmark output into BENCHMARKS.md tables and docs/charts/ charts.

    plot.py go-table  TARGET/criterion  OUT.md      # Go sync.Map set: Mops/s + ratio tables
    plot.py charts    CHART_DIR                     # SVG charts from CHART_DIR/*.csv

Inputs for `charts`: CHART_DIR/bustle.csv (mix,log2,map,threads,mops, from
benches/bustle_mixes.rs with BUSTLE_CSV) and CHART_DIR/memory_churn.csv (map,step,held_bytes,
from examples/memory.rs with MEM_CSV). Needs matplotlib only for `charts`.
"""
import csv
import json
import os
import sys
from collections import defaultdict

MAP_ORDER = ["tiermap", "papaya", "dashmap", "scc", "scc-index", "rwlock", "mutex"]
DISPLAY = {
    "rwlock": "RwLock<HashMap>",
    "mutex": "Mutex<HashMap>",
}
# Same order as benches/go_sync_map.rs.
GO_ORDER = [
    "LoadMostlyHits", "LoadMostlyMisses", "LoadOrStoreBalanced", "LoadOrStoreUnique",
    "LoadOrStoreCollision", "LoadAndDeleteBalanced", "LoadAndDeleteUnique",
    "LoadAndDeleteCollision", "Range1024", "AdversarialAlloc", "AdversarialDelete",
    "DeleteCollision", "SwapCollision", "SwapMostlyHits", "SwapMostlyMisses",
    "CompareAndSwapCollision", "CompareAndSwapNoExistingKey", "CompareAndSwapValueNotEqual",
    "CompareAndSwapMostlyHits", "CompareAndSwapMostlyMisses", "CompareAndDeleteCollision",
    "CompareAndDeleteMostlyHits", "CompareAndDeleteMostlyMisses", "Clear",
]


def short(name):
    return name.split("<")[0].lower()


def disp(m):
    return DISPLAY.get(m, m)


def load_criterion(root):
    """{workload: {map: {threads: ns_per_op}}} from criterion's estimates (median)."""
    out = defaultdict(lambda: defaultdict(dict))
    for group in os.listdir(root):
        gdir = os.path.join(root, group)
        if not os.path.isdir(gdir) or group == "report":
            continue
        for m in os.listdir(gdir):
            mdir = os.path.join(gdir, m)
            if not os.path.isdir(mdir) or m == "report":
                continue
            for t in os.listdir(mdir):
                est = os.path.join(mdir, t, "new", "estimates.json")
                if not os.path.exists(est):
                    continue
                with open(est) as f:
                    e = json.load(f)
                out[group][m][int(t)] = e["median"]["point_estimate"]
    return out


def fmt(x):
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def go_table(root, out_path):
    data = load_criterion(root)
    threads = sorted({t for w in data.values() for m in w.values() for t in m})
    lines = []
    for t in threads:
        maps = [m for m in MAP_ORDER if any(t in data[w].get(m, {}) for w in data)]
        lines.append(f"#### {t} thread{'s' if t > 1 else ''} (Mops/s, higher is better)\n")
        lines.append("| workload | " + " | ".join(disp(m) for m in maps)
                     + " | tiermap / best peer |")
        lines.append("|---|" + "---:|" * len(maps) + "---:|")
        for w in GO_ORDER:
            if w not in data:
                continue
            mops = {m: 1e3 / data[w][m][t] for m in maps if t in data[w].get(m, {})}
            if not mops:
                continue
            best_peer = max((v for m, v in mops.items() if m != "tiermap"), default=None)
            cells = []
            for m in maps:
                if m not in mops:
                    cells.append("—")
                    continue
                s = fmt(mops[m])
                if mops[m] == max(mops.values()):
                    s = f"**{s}**"
                cells.append(s)
            ratio = (f"{mops['tiermap'] / best_peer:.2f}"
                     if "tiermap" in mops and best_peer else "—")
            lines.append(f"| {w} | " + " | ".join(cells) + f" | {ratio} |")
        lines.append("")
    text = "\n".join(lines)
    if out_path == "-":
        print(text)
    else:
        with open(out_path, "w") as f:
            f.write(text + "\n")


def charts(chart_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "tiermap"  # stable SVG ids between runs
    colors = {
        "tiermap": "#d62728", "papaya": "#1f77b4", "dashmap": "#2ca02c", "scc": "#9467bd",
        "scc-index": "#8c564b", "RwLock<HashMap>": "#7f7f7f", "Mutex<HashMap>": "#bcbd22",
    }

    bustle = os.path.join(chart_dir, "bustle.csv")
    if os.path.exists(bustle):
        rows = list(csv.reader(open(bustle)))
        # Keep the last measurement of each point (the file is appended to).
        pts = {}
        for row in rows:
            mix, log2, m, t, mops = row[:5]
            ops = float(row[5]) if len(row) > 5 else 1.0
            if ops != 1.0:
                mix = f"{mix}-ops{ops:g}x"
            pts[(mix, int(log2), m, int(t))] = float(mops)
        for mix, log2 in sorted({(k[0], k[1]) for k in pts}):
            fig, ax = plt.subplots(figsize=(7.6, 4.2))
            maps = sorted({k[2] for k in pts if k[0] == mix and k[1] == log2},
                          key=lambda m: MAP_ORDER.index(short(m)) if short(m) in MAP_ORDER else 99)
            for m in maps:
                ts = sorted(k[3] for k in pts if k[:3] == (mix, log2, m))
                ys = [pts[(mix, log2, m, t)] for t in ts]
                ax.plot(ts, ys, marker="o", label=m, color=colors.get(m),
                        linewidth=2.5 if m == "tiermap" else 1.3)
            ax.set_xticks(sorted({k[3] for k in pts}))
            ax.set_xlabel("threads (machine has 2 cores: 4 threads oversubscribe)")
            ax.set_ylabel("Mops/s (median of runs)")
            ax.set_title(f"bustle {mix}, capacity 2^{log2}, ahash")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            fig.tight_layout()
            fig.savefig(os.path.join(chart_dir, f"{mix.lower()}_2e{log2}_threads.svg"))
            plt.close(fig)

    churn = os.path.join(chart_dir, "memory_churn.csv")
    if os.path.exists(churn):
        series = defaultdict(list)
        for r in csv.DictReader(open(churn)):
            series[r["map"]].append((int(r["step"]), int(r["held_bytes"]) / 1048576))
        fig, ax = plt.subplots(figsize=(8.4, 4.2))
        for m, v in series.items():
            ax.plot([s for s, _ in v], [b for _, b in v], label=m, color=colors.get(m),
                    linewidth=2.5 if m == "tiermap" else 1.3)
        ax.set_xlabel("churn step (insert i, remove i - window)")
        ax.set_ylabel("held heap MiB (counting allocator)")
        ax.set_title("Held memory along a sliding-window churn, u64 -> u64")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        fig.savefig(os.path.join(chart_dir, "memory_churn.svg"))
        plt.close(fig)


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "go-table":
        go_table(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "-")
    elif len(sys.argv) >= 2 and sys.argv[1] == "charts":
        charts(sys.argv[2])
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
