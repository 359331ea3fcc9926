#!/usr/bin/env python3
"""The client and judge of benches/soak.sh (standard library only).

Arguments: the options below, then one ISOLATION:PORT:RUNROOT_DIR per ATS instance (started by
soak.sh under traffic_manager, with the chain add-headers, auth-call, oob-trap (fail_closed),
body-rewrite). Per instance one process drives --connections keep-alive connections, each
sending requests back to back from a seeded mix and checking every answer:

  1 in 200  `x-trap: loop`            oob-trap loops to the callback deadline -> 503 (fail_closed)
  1 in 50   `x-trap: unreachable`     oob-trap traps in the request phase     -> 503
            or `x-trap-response: oob` (half of them) traps in the response phase -> 503
  1 in 20   `authorization: Bearer deny`  auth-call's HTTP call gets 401       -> 403, x-auth
  the rest  /text   -> 200 `hello from filter` (body-rewrite rewrote the origin's `origin`)
            /verify -> 200 `x-added-by=ats-wasm` (add-headers' request header reached the origin)
            /cached -> 200, 1024 x (a cache hit after the first)
            each with `x-wasm-filter: add-headers` and `x-oob-trap: alive` (both response filters ran)

A 503 must carry the failure policy's body (`filter "oob-trap" failed`). Anything else is a
wrong answer — a 503 of another filter failing closed too (e.g. auth-call, whose example YAML
is fail_closed, when its fresh VM missed a deadline on a starved machine: it is named); no answer within --timeout seconds is a hang. Every minute one row per instance;
at the end the verdict (exit status 0 only when everything held).
"""

import argparse
import http.client
import multiprocessing as mp
import os
import random
import socket
import subprocess
import sys
import threading
import time

FAIL_BODY = b'filter "oob-trap" failed'
KINDS = ("ok", "trap", "loop", "deny")
COUNTERS = ("requests", "ok", "trap", "loop", "deny", "collateral", "wrong", "hangs", "conn_errors")
COLLATERAL = "collateral"


def pick(rng, trap_every, loop_every):
    """One request of the mix: (kind, path, headers)."""
    if loop_every and rng.random() < 1 / loop_every:
        return "loop", "/text", {"x-trap": "loop"}
    if trap_every and rng.random() < 1 / trap_every:
        if rng.random() < 0.5:
            return "trap", "/text", {"x-trap": "unreachable"}
        return "trap", "/cached", {"x-trap-response": "oob"}
    if rng.random() < 1 / 20:
        return "deny", "/verify", {"authorization": "Bearer deny"}
    path = rng.choice(("/text", "/text", "/verify", "/cached"))
    return "ok", path, {"authorization": "Bearer ok"}


def judge(kind, path, status, headers, body):
    """None when the answer is what the request should get, COLLATERAL for the failure policy's
    503 on a request that did not misbehave itself, else why not."""
    if kind in ("trap", "loop"):
        if status != 503 or FAIL_BODY not in body:
            return f"{kind} {path}: expected the fail_closed 503, got {status} {body[:80]!r}"
        return None
    if status == 503 and FAIL_BODY in body:
        return COLLATERAL
    if status == 503 and b'" failed' in body:
        return f"{kind} {path}: an innocent filter failed closed: {body[:80]!r}"
    if kind == "deny":
        if status != 403 or headers.get("x-auth") != "status 401":
            return f"deny: expected 403 x-auth: status 401, got {status} x-auth={headers.get('x-auth')}"
        return None
    want = {"/text": b"hello from filter\n", "/verify": b"x-added-by=ats-wasm\n", "/cached": b"x" * 1024}[path]
    if status != 200 or body != want:
        return f"{path}: expected 200 {want[:24]!r}, got {status} {body[:80]!r}"
    for name, value in (("x-wasm-filter", "add-headers"), ("x-oob-trap", "alive")):
        if headers.get(name) != value:
            return f"{path}: expected {name}: {value}, got {headers.get(name)!r}"
    return None


def worker(port, timeout, seed, shared, mix, counts, lock, wrong_samples, stop):
    rng = random.Random(seed)
    conn = None
    while not stop.is_set():
        kind, path, hdrs = pick(rng, *mix)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        why = None
        hang = conn_error = False
        try:
            conn.request("GET", path, headers=hdrs)
            resp = conn.getresponse()
            body = resp.read()
            headers = {k.lower(): v for k, v in resp.getheaders()}
            why = judge(kind, path, resp.status, headers, body)
            if resp.will_close:
                conn.close()
                conn = None
        except socket.timeout:
            hang = True
            why = f"{kind} {path}: no answer within {timeout} s"
        except (OSError, http.client.HTTPException) as e:
            conn_error = True
            why = f"{kind} {path}: {type(e).__name__}: {e}"
        if hang or conn_error:
            conn.close()
            conn = None
        with lock:
            counts["requests"] += 1
            if why == COLLATERAL and shared:
                # In `shared` isolation the transactions in flight in the VM that failed lose
                # their context in it with the VM: the failure policy answers them too.
                counts["collateral"] += 1
                continue
            if hang:
                counts["hangs"] += 1
            elif why is not None:
                counts["wrong"] += 1
                counts["conn_errors"] += conn_error
            else:
                counts[kind] += 1
            if why is not None and len(wrong_samples) < 5:
                wrong_samples.append(time.strftime("%H:%M:%S ") + why)


def load_process(name, port, connections, timeout, seed, mix, t0, minutes, rows):
    shared = name == "shared"
    """Drives one instance; puts (minute, counts, samples) on `rows` at each minute's end."""
    counts = dict.fromkeys(COUNTERS, 0)
    lock = threading.Lock()
    samples = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=worker, args=(port, timeout, seed * 1000 + i, shared, mix, counts, lock, samples, stop), daemon=True)
        for i in range(connections)
    ]
    for t in threads:
        t.start()
    for minute in range(1, minutes + 1):
        time.sleep(max(0.0, t0 + 60 * minute - time.time()))
        with lock:
            snap = dict(counts)
            for k in counts:
                counts[k] = 0
            got = list(samples)
            samples.clear()
        rows.put((name, minute, snap, got))
    stop.set()
    for t in threads:
        t.join(timeout + 2)


def server_pid(runroot):
    """traffic_server's pid for this runroot: its lock file, checked against /proc."""
    try:
        with open(os.path.join(runroot, "run", "server.lock")) as f:
            pid = int(f.read().split()[0])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if f.read().split(b"\0")[0].endswith(b"traffic_server"):
                return pid
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def diags_count(runroot, needle):
    try:
        with open(os.path.join(runroot, "log", "diags.log"), errors="replace") as f:
            return sum(needle in line for line in f)
    except OSError:
        return 0


def reload_all(instances, stats):
    for name, _, runroot in instances:
        r = subprocess.run(
            ["traffic_ctl", f"--run-root={runroot}/runroot.yaml", "plugin", "msg", "ats_wasm", "reload"],
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "TS_ROOT"},
        )
        stats[name]["asked"] += 1
        if r.returncode != 0:
            stats[name]["ctl_failed"] += 1
            print(f"  {name}: traffic_ctl failed: {(r.stdout + r.stderr).strip()}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--reload-every", type=float, default=30)
    ap.add_argument("--timeout", type=float, default=10)
    ap.add_argument("--rss-tolerance", type=float, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--trap-every", type=int, default=50, help="1 in N requests traps (0: none)")
    ap.add_argument("--loop-every", type=int, default=200, help="1 in N requests loops (0: none)")
    ap.add_argument("instances", nargs="+", help="ISOLATION:PORT:RUNROOT_DIR")
    a = ap.parse_args()
    instances = []
    for spec in a.instances:
        name, port, runroot = spec.split(":", 2)
        instances.append((name, int(port), runroot))

    pids = {name: server_pid(runroot) for name, _, runroot in instances}
    for name, pid in pids.items():
        if pid is None:
            sys.exit(f"soak.py: no traffic_server found for {name}")
    reloads = {name: {"asked": 0, "ctl_failed": 0} for name, _, _ in instances}
    done_base = {name: diags_count(r, "serves new transactions, built in") for name, _, r in instances}
    failed_base = {name: diags_count(r, "reload failed") for name, _, r in instances}

    t0 = time.time()
    rows = mp.Queue()
    procs = [
        mp.Process(target=load_process, args=(name, port, a.connections, a.timeout, a.seed + j, (a.trap_every, a.loop_every), t0, a.minutes, rows))
        for j, (name, port, _) in enumerate(instances)
    ]
    for p in procs:
        p.start()

    print(
        f"{a.minutes} min, {a.connections} keep-alive connections per instance, reload every {a.reload_every:g} s, "
        f"1 in {a.trap_every} requests traps, 1 in {a.loop_every} loops (0: none)"
    )
    print()
    print("| isolation | minute | requests | ok | trap 503 | loop 503 | deny 403 | collateral 503 | wrong | hangs | RSS MiB | reloads |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    sys.stdout.flush()
    totals = {name: dict.fromkeys(COUNTERS, 0) for name, _, _ in instances}
    rss = {name: [] for name, _, _ in instances}
    restarts = {name: 0 for name, _, _ in instances}
    samples_all = []
    next_reload = t0 + a.reload_every if a.reload_every > 0 else float("inf")
    last_reload = t0 + 60 * a.minutes - 5  # none in the last seconds: each is seen done
    for minute in range(1, a.minutes + 1):
        end = t0 + 60 * minute
        while True:
            now = time.time()
            if next_reload <= min(now, end) and next_reload <= last_reload:
                reload_all(instances, reloads)
                next_reload += a.reload_every
                continue
            if now >= end:
                break
            time.sleep(max(0.0, min(end, next_reload) - now))
        got = {}
        while len(got) < len(instances):
            name, m, snap, samples = rows.get(timeout=a.timeout + 30)
            got[name] = (snap, samples)
        for name, _, runroot in instances:
            snap, samples = got[name]
            pid = server_pid(runroot)
            if pid != pids[name]:
                restarts[name] += 1
                pids[name] = pid
                print(f"  {name}: traffic_server restarted (pid {pid})")
            r = rss_mib(pid) if pid else None
            rss[name].append(r)
            for k in COUNTERS:
                totals[name][k] += snap[k]
            done = diags_count(runroot, "serves new transactions, built in") - done_base[name]
            print(
                f"| {name} | {minute} | {snap['requests']} | {snap['ok']} | {snap['trap']} | {snap['loop']} "
                f"| {snap['deny']} | {snap['collateral']} | {snap['wrong']} | {snap['hangs']} | {r if r is None else round(r, 1)} | {done} |"
            )
            for s in samples:
                print(f"  {name}: wrong: {s}")
            samples_all += samples
        sys.stdout.flush()
    for p in procs:
        p.join(a.timeout + 5)
    time.sleep(2)

    print()
    ok = True
    for name, _, runroot in instances:
        t = totals[name]
        failures = t["trap"] + t["loop"]
        # Each failure can take at most the other connections' transactions in flight with it.
        collateral_bound = failures * (a.connections - 1) if name == "shared" else 0
        unexpected = t["wrong"] + t["hangs"] + max(0, t["collateral"] - collateral_bound)
        done = diags_count(runroot, "serves new transactions, built in") - done_base[name]
        failed = diags_count(runroot, "reload failed") - failed_base[name] + reloads[name]["ctl_failed"]
        series = rss[name]
        base = series[0] if series else None
        later = [x for x in series[1:] if x is not None] if base else []
        if base and later:
            spread = (max(later + [base]) - min(later + [base])) / base * 100
            rss_ok = spread <= a.rss_tolerance and None not in series
            rss_text = (
                f"{base:.1f} MiB after minute 1, {min(later):.1f}-{max(later):.1f} MiB after, "
                f"spread {spread:.1f} % (limit {a.rss_tolerance:g} %)"
            )
        else:
            rss_ok = False
            rss_text = "not enough samples (a run needs at least 2 minutes)"
        print(
            f"{name}: requests={t['requests']} ok={t['ok']} expected_fail_closed={t['trap'] + t['loop']} "
            f"(trap {t['trap']}, loop {t['loop']}) deny={t['deny']} collateral={t['collateral']} "
            f"(bound {collateral_bound}) unexpected={unexpected} "
            f"(wrong {t['wrong']}, hangs {t['hangs']}, connection errors {t['conn_errors']})"
        )
        print(f"{name}: reloads asked={reloads[name]['asked']} done={done} failed={failed} traffic_server restarts={restarts[name]}")
        print(f"{name}: RSS {rss_text}")
        this_ok = unexpected == 0 and restarts[name] == 0 and failed == 0 and done == reloads[name]["asked"] and rss_ok
        print(f"{name}: verdict {'PASS' if this_ok else 'FAIL'}")
        ok = ok and this_ok
    print(f"soak: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
