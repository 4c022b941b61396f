#!/usr/bin/env python3
"""CPU seconds by process group while a benchmark runs (Linux /proc only).

Samples every 0.5 s until SIGTERM or SIGINT, then prints, for the seconds
in which a `backfill mapper` process was alive ("mapper") and for those in
which a PostgreSQL backend was running an UPDATE with no mapper alive
("limit", the bench's single statement): the machine's CPU split
(/proc/stat) and the CPU seconds of each group: PostgreSQL backends and
each of its background processes, RabbitMQ, each backfill role, the bench.

    python3 tools/cpu-by-process/sample.py > cpu.txt & pid=$!
    ./target/release/backfill-bench --template T --only limit,commit --mappers 2
    kill $pid; cat cpu.txt

A process's ticks count from the second sample it is seen in, so a
process that lives less than 0.5 s is not counted.
"""
import os
import signal
import time

HZ = os.sysconf("SC_CLK_TCK")
PG_BACKGROUND = ("autovacuum", "walwriter", "checkpointer", "background writer",
                 "logical replication", "archiver", "stats")


def group(pid):
    """The group a process counts in, and whether it is a backend running an UPDATE."""
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        comm = open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        return None, False
    title = cmd[0].decode(errors="replace") if cmd else ""
    if title.startswith("postgres:"):
        for k in PG_BACKGROUND:
            if k in title:
                return "pg " + k, False
        return "pg backend", " UPDATE" in title
    if comm == "postgres":
        return "pg postmaster", False
    if comm == "beam.smp":
        return "rabbitmq", False
    if title.endswith("/backfill") or title == "backfill":
        role = cmd[1].decode(errors="replace") if len(cmd) > 1 else "?"
        return "backfill " + role, False
    if comm.startswith("backfill-bench"):
        return "bench", False
    return "other", False


def ticks(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def machine():
    return list(map(int, open("/proc/stat").readline().split()[1:9]))


stop = False


def bye(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, bye)
signal.signal(signal.SIGINT, bye)

windows = {}  # "mapper" | "limit" -> [seconds, {group: ticks}, [machine ticks]]
last = {}
prev = machine()
while not stop:
    time.sleep(0.5)
    cur, mapper, updating = {}, False, False
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        g, upd = group(p)
        t = ticks(p) if g else None
        if t is None:
            continue
        cur[p] = (g, t)
        mapper |= g == "backfill mapper"
        updating |= upd
    now = machine()
    key = "mapper" if mapper else ("limit" if updating else None)
    if key:
        w = windows.setdefault(key, [0.0, {}, [0] * 8])
        w[0] += 0.5
        for p, (g, t) in cur.items():
            if p in last:
                w[1][g] = w[1].get(g, 0) + t - last[p][1]
        for i in range(8):
            w[2][i] += now[i] - prev[i]
    last, prev = cur, now

NAMES = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
for key, (secs, acc, sys_ticks) in windows.items():
    total = sum(sys_ticks) or 1
    print(f"== {key}: {secs:.1f} s sampled")
    print("machine: " + ", ".join(f"{n} {100 * v / total:.1f}%"
                                  for n, v in zip(NAMES, sys_ticks) if v))
    for g, t in sorted(acc.items(), key=lambda x: -x[1]):
        print(f"  {g:24s} {t / HZ:8.2f} cpu-s  {t / HZ / secs:.2f} cores")
