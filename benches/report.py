#!/usr/bin/env python3
"""Summarise the raw wrk outputs of benches/load.sh into a markdown table and a bar chart.

usage: report.py --raw DIR --out PREFIX [--meta key=value ...]

Reads DIR/manifest.tsv (round, config, object, threads, file) and the wrk `--latency` outputs it
names; writes PREFIX.md and, when matplotlib is importable, PREFIX.png.
"""

import argparse
import csv
import os
import re
import statistics
import sys

CONFIG_ORDER = ["none", "native", "wasm-shared", "wasm-transaction", "wasm-bodies", "wasm-metrics-off", "wasm-deny"]
CONFIG_LABEL = {
    "none": "no plugin",
    "native": "native plugin",
    "wasm-shared": "ats-wasm, shared",
    "wasm-transaction": "ats-wasm, transaction",
    "wasm-bodies": "ats-wasm, shared, bodies: auto",
    "wasm-metrics-off": "ats-wasm, shared, --metrics-listen=off",
    "wasm-deny": "ats-wasm, shared, deny (reads 2 headers)",
}
GOAL_RATIO = 0.97  # ats-wasm + add-headers: at least 97% of no-plugin req/s
GOAL_P99_US = 25.0  # ats-wasm + add-headers: at most 25 µs added p99
UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def object_size(meta):
    """The origin object's size as written in reports: "1 KB", "64 KB", "1500 B"."""
    n = int(meta.get("object_bytes", "1024"))
    return f"{n // 1024} KB" if n % 1024 == 0 else f"{n} B"


def to_us(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unparsable latency {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(path):
    """req/s, p50 and p99 in µs, requests, errors (socket errors + non-2xx/3xx) of one wrk run."""
    text = open(path, encoding="utf-8", errors="replace").read()
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    reqs = re.search(r"^\s+(\d+) requests in", text, re.M)
    if not (rps and p50 and p99 and reqs):
        raise ValueError(f"{path}: not a complete wrk --latency output")
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        errors += int(non2xx.group(1))
    return {
        "rps": float(rps.group(1)),
        "p50": to_us(p50.group(1)),
        "p99": to_us(p99.group(1)),
        "requests": int(reqs.group(1)),
        "errors": errors,
    }


def fmt_us(us):
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--meta", action="append", default=[])
    args = ap.parse_args()
    meta = dict(m.split("=", 1) for m in args.meta)

    runs = {}  # (config, object, threads) -> {round: result}
    with open(os.path.join(args.raw, "manifest.tsv"), encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            key = (row["config"], row["object"], int(row["threads"]))
            res = parse_wrk(os.path.join(args.raw, row["file"]))
            res["origin"] = int(row.get("origin_requests") or 0)
            runs.setdefault(key, {})[int(row["round"])] = res
    if not runs:
        sys.exit("report.py: no runs in the manifest")

    groups = sorted({(o, t) for (_, o, t) in runs}, key=lambda g: (g[0] != "cached", g[1]))
    configs = [c for c in CONFIG_ORDER if any(k[0] == c for k in runs)]
    rows = []
    for obj, threads in groups:
        base = runs.get(("none", obj, threads))
        base_rps = statistics.median(r["rps"] for r in base.values()) if base else None
        base_p99 = statistics.median(r["p99"] for r in base.values()) if base else None
        for c in configs:
            rr = runs.get((c, obj, threads))
            if not rr:
                continue
            rps = [r["rps"] for r in rr.values()]
            row = {
                "config": c,
                "object": obj,
                "threads": threads,
                "rounds": len(rr),
                "rps": statistics.median(rps),
                "rps_min": min(rps),
                "rps_max": max(rps),
                "p50": statistics.median(r["p50"] for r in rr.values()),
                "p99": statistics.median(r["p99"] for r in rr.values()),
                "errors": sum(r["errors"] for r in rr.values()),
                # Per-round ratios (same round, same group) for the chart's error bars.
                "round_ratios": [
                    r["rps"] / base[k]["rps"] for k, r in rr.items() if base and k in base and base[k]["rps"]
                ],
            }
            row["ratio"] = row["rps"] / base_rps if base_rps else None
            row["added_p99"] = row["p99"] - base_p99 if base_p99 is not None else None
            rows.append(row)

    lines = ["# ats-wasm load benchmark", ""]
    lines.append(
        f"{meta.get('date', '?')} · {meta.get('nproc', '?')} CPUs ({meta.get('cpu', '?')}) · "
        f"{meta.get('kernel', '?')} · ATS {meta.get('ats', '?')} · ats-wasm {meta.get('commit', '?')}"
    )
    lines.append("")
    lines.append(
        f"`{meta.get('wrk', 'wrk')}`, {meta.get('rounds', '?')} interleaved rounds (medians over rounds); "
        f"{meta.get('pinning', '')}; {meta.get('accept_threads', '0')} accept thread(s); loopback nginx origin, {object_size(meta)} object; the whole run took {meta.get('elapsed', '?')}; "
        f"load average before / after: {meta.get('loadavg', '?')}."
    )
    lines.append(
        "Filter: `examples/add-headers` (one request header, one response header); native plugin: "
        "`benches/native-plugin` (the same two headers in Rust, no Wasm)."
        + (
            " `deny`: `examples/deny` (reads `:path` and `User-Agent`, lets every measured request "
            "through, changes nothing)."
            if "wasm-deny" in configs
            else ""
        )
    )
    lines.append("")
    lines.append(
        "| configuration | object | net threads | req/s (median) | req/s min–max | vs no plugin | p50 | p99 "
        "| added p99 vs no plugin | goals (≥ 97 %, ≤ +25 µs) |"
    )
    lines.append("|---|---|--:|--:|--:|--:|--:|--:|--:|---|")
    for r in rows:
        ratio = f"{r['ratio'] * 100:.1f} %" if r["ratio"] is not None else "–"
        if r["config"] == "none":
            added, goal = "–", ""
        else:
            added = f"{r['added_p99']:+.0f} µs" if r["added_p99"] is not None else "–"
            goal = ""
            if r["config"].startswith("wasm") and r["ratio"] is not None:
                misses = []
                if r["ratio"] < GOAL_RATIO:
                    misses.append("req/s")
                if r["added_p99"] > GOAL_P99_US:
                    misses.append("p99")
                goal = "met" if not misses else "missed: " + ", ".join(misses)
        err = f" ({r['errors']} errors)" if r["errors"] else ""
        lines.append(
            f"| {CONFIG_LABEL[r['config']]} | {r['object']} | {r['threads']} | {r['rps']:,.0f}{err} "
            f"| {r['rps_min']:,.0f}–{r['rps_max']:,.0f} | {ratio} | {fmt_us(r['p50'])} | {fmt_us(r['p99'])} "
            f"| {added} | {goal} |"
        )
    lines.append("")
    if any(r["errors"] for r in rows):
        lines.append("**Some runs had socket errors or non-2xx/3xx responses** (counts in the req/s column).")
        lines.append("")
    # How many client requests reached the origin (nginx's request counter around each run).
    for obj in ("cached", "uncached"):
        shares = [
            r["origin"] / r["requests"] for (c, o, t), rr in runs.items() if o == obj for r in rr.values() if r["requests"]
        ]
        if shares:
            lines.append(
                f"Origin requests per client request, {obj}: {min(shares) * 100:.2f}–{max(shares) * 100:.2f} % "
                f"(expected ≈ {'0' if obj == 'cached' else '100'} %)."
            )
    lines.append("")
    lines.append(
        "Noisy: ATS, wrk and nginx share the machine's cores; compare ratios within one run, not absolute "
        "numbers across runs or machines. See `benches/README.md`."
    )
    md = "\n".join(lines) + "\n"
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(md)

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report.py: matplotlib is not available; no chart written", file=sys.stderr)
        return
    plot_configs = [c for c in configs if c != "none"]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.8 / max(1, len(plot_configs))
    for i, c in enumerate(plot_configs):
        xs, ys, lo, hi = [], [], [], []
        for g, (obj, threads) in enumerate(groups):
            r = next((r for r in rows if r["config"] == c and r["object"] == obj and r["threads"] == threads), None)
            if not r or r["ratio"] is None:
                continue
            xs.append(g + (i - (len(plot_configs) - 1) / 2) * width)
            ys.append(r["ratio"] * 100)
            rr = r["round_ratios"] or [r["ratio"]]
            lo.append(max(0.0, r["ratio"] * 100 - min(rr) * 100))
            hi.append(max(0.0, max(rr) * 100 - r["ratio"] * 100))
        bars = ax.bar(xs, ys, width, label=CONFIG_LABEL[c], yerr=[lo, hi], capsize=3)
        ax.bar_label(bars, labels=[f"{y:.0f}" for y in ys], fontsize=7, padding=2)
    ax.axhline(100, color="black", linewidth=0.8)
    ax.axhline(GOAL_RATIO * 100, color="red", linestyle="--", linewidth=0.8, label="goal: 97 %")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{obj}\n{t} net thread{'s' if t != 1 else ''}" for obj, t in groups])
    ax.set_ylabel("req/s, % of no plugin (median; bars: per-round range)")
    ratios = [r["ratio"] * 100 for r in rows if r["ratio"]]
    for r in rows:
        ratios += [x * 100 for x in r["round_ratios"]]
    ax.set_ylim(max(0, min(ratios + [GOAL_RATIO * 100]) - 10), max(ratios + [100]) + 12)
    ax.set_title(f"ats-wasm load benchmark, {meta.get('date', '')}", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=len(plot_configs) + 1, bbox_to_anchor=(0.5, -0.14))
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=110)


if __name__ == "__main__":
    main()
