#!/usr/bin/env python3
"""The Python parts of benches/instructions.sh (instructions per request in ATS, by callgrind).

    instructions.py client PORT PATH BYTES FILTER_HEADER(0|1) [EXTRA_FIELDS]
        Keep-alive HTTP client on one connection, driven over stdin: connects once to
        127.0.0.1:PORT, then for each number N read from stdin sends N `GET PATH` requests one
        after another (each with `Host` and EXTRA_FIELDS (0) more fields `x-extra-I: value-I`)
        and answers `ok N` once all responses are read. Every response must be
        200 with a body of BYTES bytes, keep the connection open and, when FILTER_HEADER is 1,
        carry `x-wasm-filter: add-headers` (0: must not); else it answers `error ...` and exits
        1. Connecting and closing (at end of input) thus stay outside any measured window.

    instructions.py window SYMBOLS DUMP_FILE...
        Sums one callgrind dump (one file per thread, `--separate-threads=yes`) and prints
        `total=IR periodic=IR calls=N/N/... threads=N busiest=IR`: the Ir of every file (its
        `totals:` line); the inclusive Ir of the `;`-separated SYMBOLS (ATS's clock-driven work)
        over all files, from their callers' call records (`cfn=`, `calls=`, cost line),
        cross-checked per file against `callgrind_annotate --inclusive=yes`; how often each
        symbol was called; the Ir of the thread with the most Ir (ATS's net thread) minus the
        SYMBOLS' Ir in it.
        Exits 1 if the two inclusive costs disagree or one symbol calls another (it would be
        subtracted twice).

    instructions.py report ROWS_TSV REQUESTS KEY=VALUE...
        The markdown report from the rows (run, config, total, periodic, calls, threads,
        seconds of the window, busiest) and the header fields (date, ats, valgrind, kernel, commit,
        warmup, object_bytes, symbols, max_vms, elapsed, plugin, native).
"""

import http.client
import re
import subprocess
import sys

NAMES = {
    "none": "no plugin",
    "native": "native Rust plugin, same header work (`benches/native-plugin`)",
    "native-bodies": "native Rust plugin, same header work plus a null response transform (`--null-transform`)",
    "wasm-shared": "ats-wasm `shared`, `add-headers`, `--metrics-listen=off`",
    "wasm-transaction": "ats-wasm `transaction`, `add-headers`, `--metrics-listen=off`",
    "wasm-bodies": "ats-wasm `shared`, `add-headers` with `bodies: auto` (a pass-through response transform)",
}


def name(config: str) -> str:
    """A configuration's row name; `CONFIG+fN` is CONFIG with N header fields in the request and
    N more in the response (instructions.sh's FIELDS)."""
    base, _, fields = config.partition("+f")
    return NAMES[base] + (f", {fields} more request and response header fields" if fields else "")


def client(port: str, path: str, size: str, want_filter: str, extra_fields: str = "0") -> int:
    nbytes, want = int(size), want_filter == "1"
    extra = [(f"x-extra-{i}", f"value-{i}") for i in range(1, int(extra_fields) + 1)]
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=300)
    conn.connect()
    for line in sys.stdin:
        n = int(line)
        for i in range(n):
            conn.putrequest("GET", path, skip_accept_encoding=True)
            for k, v in extra:
                conn.putheader(k, v)
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read()
            filter_header = resp.getheader("x-wasm-filter")
            problem = None
            if resp.status != 200:
                problem = f"status {resp.status}"
            elif len(body) != nbytes:
                problem = f"body of {len(body)} bytes, expected {nbytes}"
            elif (filter_header == "add-headers") != want:
                problem = f"x-wasm-filter is {filter_header!r}, expected {'add-headers' if want else 'none'}"
            elif resp.will_close:
                problem = "the server closes the keep-alive connection"
            if problem:
                print(f"error: request {i + 1} of {n}: {problem}", flush=True)
                return 1
        print(f"ok {n}", flush=True)
    conn.close()
    return 0


NAME_REF = re.compile(r"^\((\d+)\)(?: (.*))?$")


def parse_dump(path: str, symbols: list[str]) -> tuple[int, dict[str, int], dict[str, int]]:
    """(total Ir, inclusive Ir per symbol, calls per symbol) of one dump file."""
    names: dict[str, str] = {}  # compressed ids -> names; fn= and cfn= share them
    total = summary = None
    fn = cfn = None
    pending_calls = None  # count of a `calls=` line; its cost line comes next
    inclusive = dict.fromkeys(symbols, 0)
    calls = dict.fromkeys(symbols, 0)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if pending_calls is not None:
                if cfn in inclusive:
                    if fn in inclusive:
                        sys.exit(f"instructions.py: {path}: {fn} calls {cfn}; both are subtracted")
                    fields = line.split()
                    inclusive[cfn] += int(fields[1]) if len(fields) > 1 else 0
                    calls[cfn] += pending_calls
                pending_calls = None
            elif line.startswith(("fn=", "cfn=")):
                key, value = line.split("=", 1)
                m = NAME_REF.match(value)
                name = value
                if m:
                    if m.group(2) is not None:
                        names[m.group(1)] = m.group(2)
                    name = names.get(m.group(1), value)
                if key == "cfn":
                    cfn = name
                else:
                    fn = name
            elif line.startswith("calls="):
                pending_calls = int(line[6:].split()[0])
            elif line.startswith("totals:"):
                total = int(line.split()[1])
            elif line.startswith("summary:"):
                summary = int(line.split()[1])
    total = summary if total is None else total
    if total is None:
        sys.exit(f"instructions.py: {path} has no totals: or summary: line")
    return total, inclusive, calls


def annotate_inclusive(path: str, symbols: list[str]) -> dict[str, int]:
    """The inclusive Ir callgrind_annotate shows for each symbol in one file (0 if absent)."""
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = dict.fromkeys(symbols, 0)
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+) \([^)]*\)\s+\S*?:(.*) \[[^]]*\]$", line)
        if m and m.group(2) in found:
            found[m.group(2)] += int(m.group(1).replace(",", ""))
    return found


def window(symbols_arg: str, *files: str) -> int:
    symbols = [s.strip() for s in symbols_arg.split(";") if s.strip()]
    if not files:
        sys.exit("instructions.py: no dump files")
    total = 0
    busiest = None  # (Ir, Ir minus clock-driven Ir) of the thread with the most Ir
    inclusive = dict.fromkeys(symbols, 0)
    calls = dict.fromkeys(symbols, 0)
    for path in files:
        t, inc, n = parse_dump(path, symbols)
        annotated = annotate_inclusive(path, symbols)
        for s in symbols:
            if annotated[s] != inc[s]:
                sys.exit(f"instructions.py: {path}: {s} costs {inc[s]} Ir by its callers' records but {annotated[s]} by callgrind_annotate")
            inclusive[s] += inc[s]
            calls[s] += n[s]
        total += t
        if busiest is None or t > busiest[0]:
            busiest = (t, t - sum(inc.values()))
    periodic = sum(inclusive.values())
    print(
        f"total={total} periodic={periodic} calls={'/'.join(str(calls[s]) for s in symbols)} "
        f"threads={len(files)} busiest={busiest[1]}"
    )
    return 0


def report(rows_path: str, requests_arg: str, *meta_args: str) -> int:
    meta = dict(a.split("=", 1) for a in meta_args)
    symbols = [s.strip() for s in meta["symbols"].split(";") if s.strip()]
    requests = int(requests_arg)
    with open(rows_path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    per = {(r[0], r[1]): (int(r[2]) - int(r[3])) / requests for r in rows}
    net = {(r[0], r[1]): int(r[7]) / requests for r in rows}
    runs = list(dict.fromkeys(r[0] for r in rows))
    multi = len(runs) > 1
    out = ["# Instructions per request in ATS (callgrind)", ""]
    out.append(
        f"{meta['date']} · ATS {meta['ats']} · {meta['valgrind']} · {meta['kernel']} · ats-wasm {meta['commit']}"
    )
    out.append("")
    out.append(
        "`benches/instructions.sh`: `traffic_server` with 1 net thread under `valgrind --tool=callgrind "
        f"--instr-atstart=no --separate-threads=yes`; {meta['warmup']} warm-up requests, then {requests:,} "
        f"keep-alive requests for a cached {meta['object_bytes']}-byte object on one connection, "
        "instrumentation on only for those (ATS: `proxy.config.cache.threads_per_disk 1`; ats-wasm: "
        f"`--max-vms={meta['max_vms']}`, as valgrind cannot map the default pool's address space); "
        "the Ir of every thread, minus the inclusive Ir of ATS's "
        f"clock-driven records maintenance ({', '.join(f'`{s}`' for s in symbols)}; calls of each in "
        "this order in the table), divided by the requests. The run took "
        f"{meta['elapsed']} s. *net thread only*: the same for the thread with the most Ir (ATS's "
        "one net thread, where every hook runs), without the other threads' idle polling, which "
        "grows with the window's wall-clock time (*seconds*)."
    )
    out.append("")
    builds = []
    if meta.get("plugin"):
        builds.append(f"ats-wasm: {meta['plugin']}")
    if meta.get("native"):
        builds.append(f"native plugin: {meta['native']}")
    if builds:
        out += ["; ".join(builds) + ".", ""]
    head = ["configuration"] + (["run"] if multi else [])
    head += ["instructions per request", "over no plugin", "net thread only", "over no plugin, net thread", "requests"]
    head += ["clock-driven Ir subtracted (calls)", "Ir in the window", "threads", "seconds"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|---" + "|--:" * (len(head) - 1) + "|")
    for run, config, total, periodic, calls, threads, seconds, _ in rows:
        cells = [name(config)] + ([run] if multi else [])
        for table in (per, net):
            value = table[(run, config)]
            _, plus, fields = config.partition("+f")
            base = table.get((run, "none" + plus + fields))
            over = "—"
            if not config.startswith("none") and base is not None:
                over = f"{value - base:+,.0f} ({(value - base) / base * 100:+.1f} %)"
            cells += [f"{value:,.0f}", over]
        cells += [f"{requests:,}", f"{int(periodic):,} ({calls})", f"{int(total):,}", threads, seconds]
        out.append("| " + " | ".join(cells) + " |")
    if multi:
        out += ["", "Spread between runs, (max − min) / min:", ""]
        for config in dict.fromkeys(r[1] for r in rows):
            parts = []
            for label, table in (("all threads", per), ("net thread", net)):
                values = [table[(run, config)] for run in runs if (run, config) in table]
                spread = (max(values) - min(values)) / min(values) * 100
                parts.append(f"{label} {', '.join(f'{v:,.0f}' for v in values)} → {spread:.2f} %")
            out.append(f"- {name(config)}: " + "; ".join(parts))
    print("\n".join(out))
    return 0


def main() -> int:
    commands = {"client": client, "window": window, "report": report}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    return commands[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
