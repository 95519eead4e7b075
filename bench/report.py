#!/usr/bin/env python3
"""Turns the JSON results of scripts/bench.sh into docs/benchmarks.md and an
SVG chart. Standard library only.

    python3 bench/report.py RESULTS_DIR --out docs/benchmarks.md --svg docs/benchmarks.svg

RESULTS_DIR holds one `<system>--<scenario>.json` per run (ssegate-bench
--json output) and `meta.json` (the machine, written by bench.sh); the runs of
`bench.sh --websocket` are in RESULTS_DIR/websocket/ and become a section of
their own.
"""

import argparse
import glob
import json
import statistics
import math
import os

SYSTEMS = ["ssegate", "nchan", "rawfan"]
SYSTEM_NAMES = {"ssegate": "ssegate", "nchan": "Nchan", "rawfan": "rawfan (limit)"}
COLORS = {"ssegate": "#2b6cb0", "nchan": "#dd6b20", "rawfan": "#718096"}
SCENARIOS = ["idle", "idle-sessions", "sessions", "sessions-2k", "sessions-durable", "sessions-durable-2k", "sessions-durable-post", "broadcast-20", "broadcast-100", "storm"]
PEERS = ["nchan", "rawfan"]


def load(results):
    runs = {}
    for path in sorted(glob.glob(os.path.join(results, "*--*.json"))):
        with open(path) as f:
            r = json.load(f)
        runs[(r["label"], r["name"])] = r
    meta = {}
    meta_path = os.path.join(results, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    return runs, meta


def median_of(values):
    """One result from several runs of the same system and scenario: the
    median of every number, the first run's value for anything else."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    if all(isinstance(v, dict) for v in values):
        keys = list(dict.fromkeys(k for v in values for k in v))
        return {k: median_of([v.get(k) for v in values]) for k in keys}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return statistics.median(values)
    if all(isinstance(v, bool) for v in values):
        return sum(values) * 2 > len(values)
    return values[0]


def load_all(dirs):
    """Results of one or more runs (directories); several are merged into
    medians, and meta gets the number of runs and the dates from the
    first run's start to the last run's end."""
    loaded = [load(d) for d in dirs]
    keys = list(dict.fromkeys(k for runs, _ in loaded for k in runs))
    runs = {k: median_of([r.get(k) for r, _ in loaded]) for k in keys}
    meta = dict(loaded[-1][1]) if loaded else {}
    if len(loaded) > 1:
        meta["runs"] = len(loaded)
    if loaded:
        # From the start of the first run (results before the start was
        # recorded have only their end) to the end of the last.
        first = loaded[0][1].get("started") or loaded[0][1].get("date")
        if first and meta.get("date") and first != meta["date"]:
            meta["date"] = f"{first} to {meta['date']}"
    return runs, meta


def get(r, *path):
    for p in path:
        if r is None:
            return None
        r = r.get(p) if isinstance(r, dict) else None
    return r


def num(x, digits=None):
    """Human number: 1234567 -> 1.23M, 0.123 -> 0.123."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) >= 100):
        x = int(x)
        if abs(x) >= 1_000_000:
            return f"{x / 1e6:.2f}M"
        if abs(x) >= 10_000:
            return f"{x / 1e3:.1f}k"
        return f"{x:,}"
    if digits is not None:
        return f"{x:.{digits}f}"
    if isinstance(x, float) and x.is_integer():
        return num(int(x))
    a = abs(x)
    if a >= 1e6:
        return f"{x / 1e6:.2f}M"
    if a >= 1e4:
        return f"{x / 1e3:.1f}k"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def ratio(a, b):
    if a is None or b is None or isinstance(a, bool) or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def subscribe_calls(r):
    calls = get(r, "redis", "subscribe_calls_connect")
    if not calls:
        return None
    return sum(calls.values())


# (label, extractor, better: "lower" / "higher" / None, digits)
COMMON = [
    ("streams open", lambda r: get(r, "streams", "opened"), "higher", None),
    ("streams failed", lambda r: get(r, "streams", "failed"), "lower", None),
    ("streams closed by the server", lambda r: get(r, "streams", "closed_by_server"), "lower", None),
]
DELIVERY = [
    ("delivered events/s", lambda r: r.get("delivered_per_sec"), "higher", None),
    ("offered events/s", lambda r: r.get("offered_per_sec"), None, None),
    ("events lost (%)", lambda r: get(r, "events", "lost_pct"), "lower", 3),
    ("events duplicated", lambda r: get(r, "events", "duplicated"), "lower", None),
    ("latency p50 (ms)", lambda r: get(r, "latency_ms", "p50"), "lower", None),
    ("latency p90 (ms)", lambda r: get(r, "latency_ms", "p90"), "lower", None),
    ("latency p99 (ms)", lambda r: get(r, "latency_ms", "p99"), "lower", None),
    ("latency p99.9 (ms)", lambda r: get(r, "latency_ms", "p999"), "lower", None),
    ("latency max (ms)", lambda r: get(r, "latency_ms", "max"), "lower", None),
    ("server CPU (% of a core, window + drain)", lambda r: get(r, "server", "cpu_window_pct"), "lower", 0),
    ("server CPU per delivered event (ns)", lambda r: get(r, "server", "cpu_ns_per_delivery"), "lower", 0),
    ("server peak RSS (MiB)", lambda r: (get(r, "server", "rss_peak_kib") or 0) / 1024, "lower", 1),
    ("publishes/s achieved", lambda r: get(r, "publisher", "achieved_rate"), "higher", None),
    ("publisher fell behind", lambda r: get(r, "publisher", "fell_behind"), None, None),
    # Publishes that came due while the publisher was not sending: a
    # pause of the load generator, sent as one burst when it went on.
    ("publisher's largest backlog (publishes due, unsent)", lambda r: get(r, "publisher", "max_backlog"), "lower", None),
]
METRICS = {
    "idle": COMMON + [
        ("memory per stream (KiB, PSS delta)", lambda r: get(r, "server", "mem_per_stream_kib"), "lower", 2),
        ("memory per stream (KiB, RSS delta)", lambda r: get(r, "server", "rss_per_stream_kib"), "lower", 2),
        ("server RSS with all streams open (MiB)", lambda r: (get(r, "server", "rss_open_kib") or 0) / 1024, "lower", 1),
        ("server CPU while idle (s)", lambda r: get(r, "server", "cpu_settle_s"), "lower", 2),
        ("kernel memory per stream (KiB, slab delta, both ends)", lambda r: get(r, "server", "kernel_per_stream_kib"), None, 2),
        ("Redis connections", lambda r: get(r, "redis", "clients_open"), None, None),
    ],
    "storm": COMMON + [
        ("all streams open (s)", lambda r: get(r, "connect", "all_open_s"), "lower", 2),
        ("all streams receiving (s)", lambda r: get(r, "connect", "all_receiving_s"), "lower", 2),
        ("time to first event p50 (ms)", lambda r: get(r, "connect", "first_event_ms", "p50"), "lower", None),
        ("time to first event p99 (ms)", lambda r: get(r, "connect", "first_event_ms", "p99"), "lower", None),
        ("Redis SUBSCRIBE-family calls while connecting", subscribe_calls, "lower", None),
        ("Redis connections", lambda r: get(r, "redis", "clients_open"), None, None),
        ("server CPU while connecting (s)", lambda r: get(r, "server", "cpu_connect_s"), "lower", 2),
    ] + DELIVERY,
}


def metrics_for(scenario):
    # idle-sessions is the idle scenario on one channel per stream.
    if scenario.startswith("idle"):
        scenario = "idle"
    return METRICS.get(scenario, COMMON + DELIVERY)


def describe(scenario, r):
    c = r["config"]
    via = {"redis-publish": "Redis PUBLISH", "redis-function": "the Redis Function", "http": "HTTP POST"}
    text = f"{c['streams']:,} streams over {c['channels']:,} channel(s)"
    if c.get("publish"):
        text += f", {num(c['rate'])} publishes/s"
    if c.get("storm"):
        text += ", all streams connecting at once while publishing"
    if c.get("publish"):
        text += f"; {c['duration_s']:g} s measured after {c['warmup_s']:g} s warmup, {c['drain_s']:g} s drain"
    else:
        text += f"; memory read {c['settle_s']:g} s after the last stream opened"
        text += (
            "; the idle CPU is over that wait, each server with the keep-alive it was run with"
            " (by default ssegate a heartbeat every 15 s per stream, Nchan and rawfan none;"
            " the same work side by side: \"Heartbeats written by the tick\" below)"
        )
    return text, via


def markdown(runs, meta, svg_name):
    systems = [s for s in SYSTEMS if any(k[0] == s for k in runs)]
    scenarios = [s for s in SCENARIOS if any(k[1] == s for k in runs)]
    scenarios += sorted({k[1] for k in runs} - set(scenarios))
    peers = [p for p in PEERS if p in systems and "ssegate" in systems]
    out = []
    w = out.append
    quick = meta.get("quick") == "1"
    w("# Benchmarks")
    w("")
    if quick:
        w("> **Harness check at a tiny scale (`--quick`)**: these figures only show that the")
        w("> harness works; they say nothing about performance.")
        w("")
    if meta.get("runs"):
        w(f"ssegate side by side with its peers, in {meta['runs']} paired runs on one machine")
        w("and one Redis; every figure below is the median of the runs:")
    else:
        w("ssegate side by side with its peers, in one run, on one machine and one Redis:")
    w("[Nchan](https://nchan.io) (nginx module, 2 workers, Redis-backed) and rawfan, a")
    w("feature-less fan-out server (raw sockets, one PSUBSCRIBE, pre-encoded frames) that")
    w("stands for the physical limit of this machine. The load generator (`bench/`,")
    w("`ssegate-bench`) shares the machine with the server, so compare ratios, not")
    w("absolute figures. Every scenario runs against a freshly started server after a")
    w("Redis `FLUSHALL`.")
    w("")
    w("How it measures: each payload carries its channel's sequence number and the")
    w("publish time in microseconds; latency is from that stamp to the moment a client")
    w("parsed the event (HdrHistogram). Expected events are those published on a")
    w("stream's channel during the measured window; lost = expected − delivered (distinct")
    w("sequence numbers). Memory per stream is the server's PSS growth (RSS for a single")
    w("process) from before the first connect to after all streams are open and settled,")
    w("divided by the streams. CPU is the server's utime + stime from `/proc`.")
    w("")
    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    for key, label in [("date", "date"), ("cpu", "CPU"), ("nproc", "cores (nproc)"), ("mem", "memory"),
                       ("kernel", "kernel"), ("redis", "Redis"), ("nginx", "nginx"), ("nchan", "Nchan package"),
                       ("rustc", "rustc"), ("commit", "ssegate commit"),
                       ("loadavg", "load average (1, 5, 15 min)")]:
        if meta.get(key):
            w(f"| {label} | {meta[key]} |")
    w("")
    w("## Reproduce")
    w("")
    w("```sh")
    w(meta.get("command") or "scripts/bench.sh")
    w("```")
    w("")
    w("`scripts/bench.sh --help` lists the options; `--quick` is the tiny harness check")
    w("CI can run. A single run by hand, e.g. against a running ssegate:")
    w("")
    w("```sh")
    w("target/release/ssegate-bench --target ssegate --url http://127.0.0.1:8080 \\")
    w("  --redis-url redis://127.0.0.1:6379 --scenario broadcast --streams 15000 \\")
    w("  --server-pid $(pgrep -x ssegate) --json result.json")
    w("```")
    w("")
    w("## Summary")
    w("")
    if svg_name:
        w(f"![benchmark chart]({os.path.basename(svg_name)})")
        w("")
    head = "| scenario | " + " | ".join(SYSTEM_NAMES[s] for s in systems) + " |"
    w(head)
    w("|---|" + "---|" * len(systems))
    for sc in scenarios:
        cells = []
        for s in systems:
            r = runs.get((s, sc))
            cells.append(summary_cell(sc, r) if r else "not run")
        w(f"| {sc} | " + " | ".join(cells) + " |")
    w("")
    for sc in scenarios:
        any_run = next((runs[(s, sc)] for s in systems if (s, sc) in runs), None)
        if any_run is None:
            continue
        text, via = describe(sc, any_run)
        w(f"## {sc}")
        w("")
        w(text + ".")
        methods = sorted({f"{SYSTEM_NAMES[s]}: {via.get(get(runs[(s, sc)], 'config', 'publish'), '–')}"
                          for s in systems if (s, sc) in runs and get(runs[(s, sc)], "config", "publish")})
        if methods:
            w("Published through " + "; ".join(methods) + ".")
        w("")
        here = [s for s in systems if (s, sc) in runs]
        here_peers = [p for p in peers if p in here and "ssegate" in here]
        cols = [SYSTEM_NAMES[s] for s in here] + [f"ssegate ÷ {SYSTEM_NAMES[p]}" for p in here_peers]
        w("| metric | " + " | ".join(cols) + " |")
        w("|---|" + "---|" * len(cols))
        for label, fn, better, digits in metrics_for(sc):
            vals = {s: fn(runs[(s, sc)]) for s in here}
            if all(v is None for v in vals.values()):
                continue
            tag = {"lower": " ↓", "higher": " ↑"}.get(better, "")
            cells = [num(vals[s], digits) for s in here]
            cells += [ratio(vals.get("ssegate"), vals.get(p)) if better else "" for p in here_peers]
            w(f"| {label}{tag} | " + " | ".join(cells) + " |")
        w("")
        stages_table(w, runs.get(("ssegate", sc)))
    w("↓ lower is better, ↑ higher is better; a ratio is ssegate's figure divided by the peer's.")
    w("")
    return "\n".join(out)


STAGES = [
    ("receive", "receive: publish to read from Redis (durable events, to about ±0.5 ms)"),
    ("dispatch", "dispatch: decode and queue to the channel's local streams (per event)"),
    ("queue", "queue: read from Redis to taken by the stream for a write (dispatch included)"),
    ("publish_to_write", "publish to write (receive + queue; ephemeral events: queue)"),
]


def stages_table(w, r):
    """ssegate's own latency histograms over the window, by stage."""
    stages = get(r, "server", "stages_ms") if r else None
    if not stages:
        return
    w("ssegate's own latency by stage (its `/metrics` histograms over the window,")
    w("quantiles interpolated within buckets of 50, 100, 250, 500 µs, 1, 2.5, 5 ms...):")
    w("")
    w("| stage | samples | mean (ms) | p50 (ms) | p90 (ms) | p99 (ms) |")
    w("|---|---|---|---|---|---|")
    for key, label in STAGES:
        st = stages.get(key)
        if st:
            w(f"| {label} | {num(st['count'])} | {num(st['mean_ms'])} | {num(st['p50_ms'])} "
              f"| {num(st['p90_ms'])} | {num(st['p99_ms'])} |")
    w("")


def summary_cell(sc, r):
    if sc.startswith("idle"):
        return f"{num(get(r, 'server', 'mem_per_stream_kib'), 2)} KiB/stream"
    parts = []
    if sc == "storm":
        t = get(r, "connect", "all_receiving_s")
        parts.append(f"all receiving in {num(t, 2)} s" if t is not None else "NOT all receiving")
        calls = subscribe_calls(r)
        if calls is not None:
            parts.append(f"{num(calls)} SUBSCRIBE")
    parts.append(f"{num(r.get('delivered_per_sec'))}/s")
    parts.append(f"p50 {num(get(r, 'latency_ms', 'p50'))} ms")
    parts.append(f"p99 {num(get(r, 'latency_ms', 'p99'))} ms")
    lost = get(r, "events", "lost_pct") or 0
    if lost > 0:
        parts.append(f"{num(lost, 3)}% lost")
    if get(r, "publisher", "fell_behind"):
        parts.append("publisher behind")
    return ", ".join(parts)


# ----------------------------------------------------------------- chart

def tick(t):
    """Axis label: no trailing zeros."""
    if t >= 1000:
        return num(int(round(t)))
    return f"{t:g}"


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def panel(y0, width, title, groups, systems, log=False, unit=""):
    """A grouped bar chart: groups = [(group label, {system: value})]."""
    h = 250
    left, right, top, bottom = 70, 20, 36, 40
    pw, ph = width - left - right, h - top - bottom
    parts = [f'<text x="{left}" y="{y0 + 22}" font-size="15" font-weight="bold">{esc(title)}</text>']
    values = [v for _, g in groups for v in g.values() if v is not None and v > 0]
    if not values:
        parts.append(f'<text x="{left}" y="{y0 + 60}" font-size="12">no data</text>')
        return parts, h
    vmax = max(values)
    if log:
        lo = 10 ** math.floor(math.log10(min(values)))
        hi = 10 ** math.ceil(math.log10(vmax))
        if hi <= lo:
            hi = lo * 10

        def scale(v):
            v = max(v, lo)
            return (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        ticks = []
        t = lo
        while t <= hi * 1.0001:
            ticks.append(t)
            t *= 10
    else:
        mag = 10 ** math.floor(math.log10(vmax))
        step = next(m * mag for m in (0.2, 0.5, 1, 2, 5, 10) if vmax / (m * mag) <= 5)
        hi = step * math.ceil(vmax / step)

        def scale(v):
            return v / hi
        ticks = [i * step for i in range(int(round(hi / step)) + 1)]
    base = y0 + top + ph
    for t in ticks:
        y = base - scale(t) * ph
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e2e8f0"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{esc(tick(t))}</text>')
    parts.append(f'<line x1="{left}" y1="{base}" x2="{left + pw}" y2="{base}" stroke="#4a5568"/>')
    gw = pw / len(groups)
    bw = min(48, gw * 0.8 / max(1, len(systems)))
    for gi, (label, vals) in enumerate(groups):
        gx = left + gi * gw + (gw - bw * len(systems)) / 2
        for si, s in enumerate(systems):
            v = vals.get(s)
            x = gx + si * bw
            if v is None:
                parts.append(f'<text x="{x + bw / 2:.1f}" y="{base - 4}" font-size="10" text-anchor="middle" fill="#a0aec0">n/a</text>')
                continue
            bh = max(scale(v) * ph, 1) if v > 0 else 0
            parts.append(f'<rect x="{x + 2:.1f}" y="{base - bh:.1f}" width="{bw - 4:.1f}" height="{bh:.1f}" fill="{COLORS[s]}"><title>{esc(SYSTEM_NAMES[s])}: {esc(num(v))}{esc(unit)}</title></rect>')
            parts.append(f'<text x="{x + bw / 2:.1f}" y="{base - bh - 4:.1f}" font-size="10" text-anchor="middle">{esc(num(v))}</text>')
        first, _, second = label.partition("\n")
        cx = left + gi * gw + gw / 2
        parts.append(f'<text x="{cx:.1f}" y="{base + 17}" font-size="12" text-anchor="middle">{esc(first)}</text>')
        if second:
            parts.append(f'<text x="{cx:.1f}" y="{base + 31}" font-size="10" text-anchor="middle" fill="#4a5568">{esc(second)}</text>')
    return parts, h


def svg(runs, meta):
    systems = [s for s in SYSTEMS if any(k[0] == s for k in runs)]
    width = 900

    def groups(names, fn, offered=False):
        out = []
        for sc in names:
            present = [runs[(s, sc)] for s in systems if (s, sc) in runs]
            if not present:
                continue
            label = sc
            if offered and present[0].get("offered_per_sec"):
                label += f"\noffered {num(present[0]['offered_per_sec'])}/s"
            out.append((label, {s: (fn(runs[(s, sc)]) if (s, sc) in runs else None) for s in systems}))
        return out

    delivery = ["sessions", "sessions-2k", "sessions-durable", "sessions-durable-2k", "sessions-durable-post", "broadcast-20", "broadcast-100", "storm"]
    panels = [
        ("Memory per idle stream, KiB (lower is better)", groups(["idle"], lambda r: get(r, "server", "mem_per_stream_kib")), False, " KiB"),
        ("Delivered events per second (higher is better)", groups(delivery, lambda r: r.get("delivered_per_sec"), offered=True), False, "/s"),
        ("Latency p99, ms, log scale (lower is better)", groups(delivery, lambda r: get(r, "latency_ms", "p99")), True, " ms"),
        ("Reconnect storm: seconds until every stream receives (lower is better)",
         groups(["storm"], lambda r: get(r, "connect", "all_receiving_s")), False, " s"),
    ]
    body = []
    y = 50
    for title, gs, log, unit in panels:
        if not gs:
            continue
        parts, h = panel(y, width, title, gs, systems, log, unit)
        body += parts
        y += h
    # Legend.
    legend = []
    lx = 70
    for s in systems:
        legend.append(f'<rect x="{lx}" y="18" width="14" height="14" fill="{COLORS[s]}"/>')
        legend.append(f'<text x="{lx + 20}" y="30" font-size="13">{esc(SYSTEM_NAMES[s])}</text>')
        lx += 150
    note = f"{meta.get('streams', '')} streams, {meta.get('nproc', '?')} cores, {meta.get('date', '')}"
    legend.append(f'<text x="{width - 20}" y="30" font-size="11" text-anchor="end" fill="#4a5568">{esc(note)}</text>')
    height = y + 10
    return "\n".join(
        [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">',
         f'<rect width="{width}" height="{height}" fill="white"/>']
        + legend + body + ["</svg>", ""])


WS_SYSTEMS = ["ssegate-ws", "ssegate", "socketio", "ws"]
WS_NAMES = {"ssegate-ws": "ssegate WebSocket", "ssegate": "ssegate SSE",
            "socketio": "Socket.IO 4 + Redis adapter", "ws": "ws (plain)"}


def websocket_section(runs):
    """Markdown lines comparing the WebSocket runs (bench.sh --websocket)."""
    systems = [s for s in WS_SYSTEMS if any(k[0] == s for k in runs)]
    systems += sorted({k[0] for k in runs} - set(systems))
    rows = [
        ("idle", "memory per connection, KiB (PSS) ↓", lambda r: get(r, "server", "mem_per_stream_kib"), 2),
        ("idle", "connections open", lambda r: get(r, "streams", "opened"), None),
        ("broadcast-20", "delivered/s ↑", lambda r: get(r, "delivered_per_sec"), None),
        ("broadcast-20", "offered/s", lambda r: get(r, "offered_per_sec"), None),
        ("broadcast-20", "latency p50, ms ↓", lambda r: get(r, "latency_ms", "p50"), 1),
        ("broadcast-20", "latency p99, ms ↓", lambda r: get(r, "latency_ms", "p99"), 1),
        ("broadcast-20", "lost ↓", lambda r: get(r, "events", "lost"), None),
        ("broadcast-20", "closed by the server ↓", lambda r: get(r, "streams", "closed_by_server"), None),
        ("broadcast-20", "server CPU, % of a core", lambda r: get(r, "server", "cpu_window_pct"), 0),
    ]
    any_run = next(iter(runs.values()))
    out = ["## WebSocket", "",
           f"{get(any_run, 'config', 'streams')} connections per run, each against a freshly started server:"
           " ssegate over WebSocket (`/v1/ws?channel=`) and over SSE, Socket.IO 4 with"
           " `@socket.io/redis-adapter` (a room per channel, publishes through"
           " `@socket.io/redis-emitter`'s Redis message) and a plain `ws` server fanning out"
           " Redis pub/sub (`bench/peers`). idle: connections over N/10 channels, nothing"
           " published; broadcast-20: one channel, 20 publishes/s through Redis.", "",
           "| metric | " + " | ".join(WS_NAMES.get(s, s) for s in systems) + " |",
           "|---|" + "---|" * len(systems)]
    for sc, label, fn, digits in rows:
        cells = [num(fn(runs[(s, sc)]), digits) if (s, sc) in runs else "not run" for s in systems]
        out.append(f"| {sc}: {label} | " + " | ".join(cells) + " |")
    out.append("")
    return out


KEPT = "<!-- Kept when bench.sh regenerates this file: the sections below come from other runs and scripts. -->"


def kept_tail(path):
    """The part of an existing report from the KEPT marker on ('' without one)."""
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        return ""
    at = old.find(KEPT)
    return old[at:] if at >= 0 else ""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="results directories; several give medians")
    ap.add_argument("--out", default="docs/benchmarks.md")
    ap.add_argument("--svg", default=None)
    ap.add_argument("--command", default=None, help="the command shown under Reproduce")
    a = ap.parse_args()
    runs, meta = load_all(a.results)
    if a.command:
        meta["command"] = a.command
    ws_runs, _ = load_all([os.path.join(d, "websocket") for d in a.results])
    if not runs and not ws_runs:
        raise SystemExit(f"report.py: no results in {' '.join(a.results)}")
    text = ""
    if runs:
        svg_path = a.svg or os.path.splitext(a.out)[0] + ".svg"
        with open(svg_path, "w") as f:
            f.write(svg(runs, meta))
        text = markdown(runs, meta, svg_path)
    else:
        text = "# Benchmarks\n"
    if ws_runs:
        text += "\n" + "\n".join(websocket_section(ws_runs))
    tail = kept_tail(a.out)
    with open(a.out, "w") as f:
        f.write(text)
        f.write("\n")
        if tail:
            f.write("\n" + tail)


if __name__ == "__main__":
    main()
