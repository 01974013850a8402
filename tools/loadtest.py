#!/usr/bin/env python3
"""Bounded closed-loop HTTP load generator for embedding servers on 127.0.0.1.

What it measures, per phase (one JSON line each on stdout; progress goes to stderr):
  * throughput: embedded texts per second (ok texts / wall time of the phase, from the first
    request sent to the last answer received),
  * latency: p50 and p99 of the requests that came back 200 with a well-formed embedding,
  * the outcome of every request: HTTP status counts, 429s (load shedding, not an error),
    errors (any other non-2xx, transport errors, and 200s whose body is not exactly one
    embedding of --dim floats),
  * the server's peak resident memory: VmHWM from /proc/PID/status for --pid and all its
    descendants (the max of them, for a wrapper process). VmHWM is the high-water mark since
    the process started, so each phase reports the peak reached so far, not within that phase.

Phases:
  * warm-up: --warmup requests at concurrency 4 (not reported), bounded by --warmup-duration;
  * one load phase per --concurrency level: that many closed-loop clients (each sends its
    next request as soon as the previous one is answered);
  * optionally an overload phase (--overload C): C closed-loop clients, meant to be well above
    the server's concurrency limit; reports how many got 429 / 200 / other errors, and then
    whether the server still answers a normal request ("healthy_after").

Every request carries one ragged English text of 8-256 words, drawn uniformly from the fixed
word list below by random.Random seeded with --seed and the phase name, so two servers run
with the same --seed see the same texts in the same order.

How it is bounded (it always stops by itself):
  * per phase at most --requests requests and at most --duration seconds of sending; requests
    in flight at the end get at most --timeout seconds each, and the whole phase is cancelled
    at duration + timeout + 5 s;
  * a hard overall --deadline (seconds) across all phases: each phase's duration is cut to
    what is left, phases that would start after it are skipped, and the process exits 3 if
    the deadline passes while something is still running;
  * only 127.0.0.1 is ever contacted (anything else is refused), proxies from the environment
    are ignored, and redirects are not followed.

The client is aiohttp: httpx was tried first and spent ~19 ms of CPU per request at 128
connections (its pool), stealing most of a core from the servers it measures on a 2-core
machine; aiohttp's cost per request is an order of magnitude lower ("client_cpu_s" shows it).

Examples (run with the venv that tools/serve_bench.sh creates, target/venvs/loadtest):
  target/venvs/loadtest/bin/python tools/loadtest.py --port 8080 --label bge \\
      --api openai --path /v1/embeddings --model all-MiniLM-L6-v2 --concurrency 1,16,128 \\
      --requests 500 --duration 30 --pid SERVER_PID
  target/venvs/loadtest/bin/python tools/loadtest.py --port 8080 --api tei --concurrency 0 \\
      --overload 128 --overload-requests 2000 --overload-duration 20
"""
import argparse
import asyncio
import json
import math
import os
import random
import sys
import time

import aiohttp

ALLOWED_HOST = "127.0.0.1"

from ragged_texts import ragged_text  # noqa: E402  (tools/ is the script's directory)


def text_at(seed, phase, k):
    """The k-th text of a phase: 8-256 words, a function of (seed, phase, k) only, so both
    servers get the same texts in the same order (made on demand: no list to hold)."""
    return ragged_text(random.Random(f"{seed}:{phase}:{k}"))


# ---------------------------------------------------------------------------------------
# Server memory: VmHWM of a process and its descendants.

def _descendants(pid):
    """pid and all processes below it, from /proc/PID/task/*/children (Linux)."""
    seen, stack = [], [pid]
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return seen


def peak_rss_bytes(pid):
    """Max VmHWM (bytes) over pid and its descendants, or None when pid is unknown/gone."""
    if not pid:
        return None
    best = None
    for p in _descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        kb = int(line.split()[1])
                        best = max(best or 0, kb * 1024)
        except OSError:
            pass
    return best


# ---------------------------------------------------------------------------------------
# One request.

class Api:
    """Request body and response check of one API shape."""

    def __init__(self, kind, path, model, dim):
        self.kind, self.path, self.model, self.dim = kind, path, model, dim

    def body(self, text):
        if self.kind == "openai":
            return {"model": self.model, "input": [text]}
        return {"inputs": [text]}

    def valid(self, payload):
        """True when the 200 body holds exactly one embedding of self.dim numbers."""
        try:
            if self.kind == "openai":
                data = payload["data"]
                return len(data) == 1 and len(data[0]["embedding"]) == self.dim
            return len(payload) == 1 and len(payload[0]) == self.dim
        except (KeyError, TypeError, IndexError):
            return False


_TRANSPORT_ERRORS_SHOWN = [0]


async def one_request(session, base_url, api, text, timeout):
    """(outcome, latency_s): outcome is an HTTP status as str, 'bad_body' or 'transport'."""
    t0 = time.perf_counter()
    try:
        async with session.post(base_url + api.path, json=api.body(text), timeout=timeout,
                                allow_redirects=False) as r:
            status = str(r.status)
            body = await r.read()
        if status == "200":
            try:
                ok = api.valid(json.loads(body))
            except ValueError:
                ok = False
            if not ok:
                status = "bad_body"
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        status = "transport"
        _TRANSPORT_ERRORS_SHOWN[0] += 1
        if _TRANSPORT_ERRORS_SHOWN[0] <= 5:  # a few, not thousands in an overload phase
            print(f"transport error: {type(e).__name__}: {e}", file=sys.stderr)
    return status, time.perf_counter() - t0


def session(connections):
    """An aiohttp session with `connections` keep-alive connections, ignoring proxies."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    return aiohttp.ClientSession(connector=connector, trust_env=False)


# ---------------------------------------------------------------------------------------
# One closed-loop phase.

def percentile(sorted_values, q):
    """Nearest-rank percentile (q in 0..100) of an already sorted list, None when empty."""
    if not sorted_values:
        return None
    k = math.ceil(q / 100 * len(sorted_values)) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, k))]


async def run_phase(args, api, phase, concurrency, max_requests, duration, backoff_s=0.0):
    """concurrency closed-loop clients; at most max_requests requests started, none started
    after `duration` seconds. Returns the phase's counters."""
    counts, latencies = {}, []
    next_index = 0
    timeout = aiohttp.ClientTimeout(total=args.timeout, connect=min(args.timeout, 10.0))
    async with session(concurrency) as client:
        start = time.perf_counter()
        cpu0 = time.process_time()
        stop_sending = start + duration
        last_answer = start

        async def client_loop():
            nonlocal next_index, last_answer
            while next_index < max_requests and time.perf_counter() < stop_sending:
                k = next_index  # single-threaded event loop: no lock needed
                next_index += 1
                status, lat = await one_request(client, args.base_url, api,
                                                text_at(args.seed, phase, k), timeout)
                last_answer = time.perf_counter()
                counts[status] = counts.get(status, 0) + 1
                if status == "200":
                    latencies.append(lat)
                elif status == "429" and backoff_s > 0:
                    await asyncio.sleep(backoff_s)

        tasks = [asyncio.create_task(client_loop()) for _ in range(concurrency)]
        # Hard bound on the phase: sending stops at `duration`, and what is in flight then
        # gets one request timeout plus a margin before everything is cancelled.
        _, pending = await asyncio.wait(tasks, timeout=duration + args.timeout + 5)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            counts["cancelled"] = len(pending)  # at most one request in flight per client
            last_answer = time.perf_counter()
    wall = max(last_answer - start, 1e-9)
    client_cpu = time.process_time() - cpu0
    latencies.sort()
    ok = counts.get("200", 0)
    n429 = counts.get("429", 0)
    other_2xx = sum(v for k, v in counts.items() if k.startswith("2") and k != "200")
    sent = sum(counts.values())
    return {
        "requests": sent,
        "ok": ok,
        "rejected_429": n429,
        # any other status, 'transport', 'bad_body' (a 200 without one --dim embedding),
        # and 'cancelled' (in flight when the phase's hard bound hit)
        "errors": sent - ok - n429 - other_2xx,
        "status_counts": dict(sorted(counts.items())),
        "wall_s": round(wall, 3),
        "texts_per_s": round(ok / wall, 2),
        "p50_ms": None if not latencies else round(percentile(latencies, 50) * 1e3, 2),
        "p99_ms": None if not latencies else round(percentile(latencies, 99) * 1e3, 2),
        # CPU seconds this load generator spent (it may share the servers' CPUs)
        "client_cpu_s": round(client_cpu, 2),
    }


async def healthy_after(args, api, budget_s=15.0):
    """Whether a normal single request gets a valid 200 within budget_s (retried on 429 or a
    transport error every 0.5 s). Returns (bool, attempts)."""
    deadline = time.perf_counter() + budget_s
    attempts = 0
    text = text_at(args.seed, "health", 0)
    timeout = aiohttp.ClientTimeout(total=min(args.timeout, budget_s))
    async with session(1) as client:
        while time.perf_counter() < deadline and attempts < 30:
            attempts += 1
            status, _ = await one_request(client, args.base_url, api, text, timeout)
            if status == "200":
                return True, attempts
            await asyncio.sleep(0.5)
    return False, attempts


# ---------------------------------------------------------------------------------------

def emit(record):
    print(json.dumps(record), flush=True)


async def main_async(args, api):
    t_end = time.perf_counter() + args.deadline
    left = lambda: t_end - time.perf_counter()  # noqa: E731
    common = {"server": args.label, "api": args.api, "path": api.path, "seed": args.seed}

    if args.warmup > 0 and left() - args.timeout - 5 > 0:
        d = min(args.warmup_duration, left() - args.timeout - 5)
        r = await run_phase(args, api, "warmup", min(4, args.warmup), args.warmup, d)
        print(f"[{args.label}] warm-up: {r['status_counts']}", file=sys.stderr)

    for c in args.concurrency:
        # Keep room for the tail of the phase (in-flight requests) inside the deadline.
        d = min(args.duration, left() - args.timeout - 5)
        if d <= 0:
            print(f"[{args.label}] deadline reached; skipping concurrency {c}", file=sys.stderr)
            continue
        if args.requests < c:
            print(f"[{args.label}] note: --requests {args.requests} < concurrency {c}: only "
                  f"{args.requests} clients will be busy", file=sys.stderr)
        r = await run_phase(args, api, f"load-c{c}", c, args.requests, d)
        emit({**common, "phase": "load", "concurrency": c, **r,
              "peak_rss_bytes": peak_rss_bytes(args.pid)})

    if args.overload:
        d = min(args.overload_duration, left() - args.timeout - 20)
        if d <= 0:
            print(f"[{args.label}] deadline reached; skipping overload", file=sys.stderr)
            return
        r = await run_phase(args, api, f"overload-c{args.overload}", args.overload,
                            args.overload_requests, d, backoff_s=args.overload_backoff_ms / 1e3)
        ok_after, attempts = await healthy_after(args, api)
        emit({**common, "phase": "overload", "concurrency": args.overload,
              "server_limit": args.server_limit, **r,
              "healthy_after": ok_after, "health_attempts": attempts,
              "peak_rss_bytes": peak_rss_bytes(args.pid)})


# ---------------------------------------------------------------------------------------
# --table: the Markdown summary of a results file (JSON lines of one or more runs).

def _median(values):
    values = sorted(v for v in values if v is not None)
    return None if not values else values[len(values) // 2] if len(values) % 2 else \
        (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


def _fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def markdown_table(path, ours="bge", peer="infinity"):
    """Load rows: per concurrency, the median over repeated runs of each server's texts/s and
    p99, and the ratios ours/peer (texts/s: >1 means ours is faster; p99: <1 means ours has
    the lower tail latency). Then one row per overload phase."""
    load, over = {}, []
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if r.get("phase") == "load":
            load.setdefault(r["concurrency"], {}).setdefault(r["server"], []).append(r)
        elif r.get("phase") == "overload":
            over.append(r)
    out = [] if not load else [f"| clients | {ours} texts/s | {peer} texts/s | ratio | {ours} p99 ms | "
           f"{peer} p99 ms | ratio | {ours} errors | {peer} errors | {ours} peak RSS MiB | "
           f"{peer} peak RSS MiB |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in sorted(load):
        stats = {}
        for srv in (ours, peer):
            rows = load[c].get(srv, [])
            rss = _median([r["peak_rss_bytes"] for r in rows])
            stats[srv] = (_median([r["texts_per_s"] for r in rows]),
                          _median([r["p99_ms"] for r in rows]),
                          sum(r["errors"] for r in rows) if rows else None,
                          None if rss is None else rss / 2**20)
        (a_tp, a_p99, a_err, a_rss), (b_tp, b_p99, b_err, b_rss) = stats[ours], stats[peer]
        tp_ratio = a_tp / b_tp if a_tp is not None and b_tp else None
        p99_ratio = a_p99 / b_p99 if a_p99 is not None and b_p99 else None
        cols = [str(c), _fmt(a_tp), _fmt(b_tp), _fmt(tp_ratio, 2), _fmt(a_p99), _fmt(b_p99),
                _fmt(p99_ratio, 2), "-" if a_err is None else str(a_err),
                "-" if b_err is None else str(b_err), _fmt(a_rss, 0), _fmt(b_rss, 0)]
        out.append("| " + " | ".join(cols) + " |")
    if over:
        out += ["" if out else None, "| overload | clients | server limit | requests | 200 | 429 | other errors "
                "| p99 ms of 200s | healthy after |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in over:
            limit = r.get("server_limit") or "-"
            out.append(f"| {r['server']} | {r['concurrency']} | {limit} | "
                       f"{r['requests']} | {r['ok']} | {r['rejected_429']} | {r['errors']} | "
                       f"{_fmt(r['p99_ms'])} | {r['healthy_after']} |")
    return "\n".join(line for line in out if line is not None)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=ALLOWED_HOST, help="must be 127.0.0.1 (the only target "
                   "this tool will contact)")
    p.add_argument("--port", type=int)
    p.add_argument("--label", default="server", help='"server" field of the output')
    p.add_argument("--api", choices=["openai", "tei"], default="openai",
                   help='openai: {"model", "input": [text]}; tei: {"inputs": [text]}')
    p.add_argument("--path", help="request path (default /v1/embeddings for openai, /embed "
                   "for tei; infinity serves openai at /embeddings)")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="model name in openai bodies")
    p.add_argument("--dim", type=int, default=384, help="expected embedding dimension")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", default="1,16,128",
                   help="comma-separated closed-loop client counts, one phase each "
                   "(0 or empty: no load phases)")
    p.add_argument("--requests", type=int, default=500, help="max requests per phase")
    p.add_argument("--duration", type=float, default=30.0, help="max seconds of sending per "
                   "phase")
    p.add_argument("--warmup", type=int, default=16, help="warm-up requests (0: none)")
    p.add_argument("--warmup-duration", type=float, default=15.0)
    p.add_argument("--overload", type=int, default=0, help="clients of the overload phase "
                   "(0: no overload phase)")
    p.add_argument("--overload-requests", type=int, default=2000)
    p.add_argument("--overload-duration", type=float, default=20.0)
    p.add_argument("--overload-backoff-ms", type=float, default=10.0,
                   help="pause of a client after a 429 in the overload phase")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    p.add_argument("--deadline", type=float, default=600.0, help="hard limit for the whole "
                   "run, seconds")
    p.add_argument("--pid", type=int, help="server process for peak_rss_bytes")
    p.add_argument("--server-limit", type=int, help="the server's concurrency limit, copied "
                   "into the overload line (informative only)")
    p.add_argument("--table", metavar="RESULTS", help="print the Markdown summary of a results "
                   "file (bge vs infinity) and exit; sends no request")
    args = p.parse_args(argv)
    if args.table:
        return args
    if args.port is None:
        p.error("--port is required")

    if args.host != ALLOWED_HOST:
        p.error(f"refusing host {args.host!r}: this tool only targets {ALLOWED_HOST}")
    if not 0 < args.port < 65536:
        p.error("bad --port")
    args.base_url = f"http://{ALLOWED_HOST}:{args.port}"
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip() and int(c) > 0]
    for name in ("requests", "overload_requests", "warmup"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if min(args.duration, args.timeout, args.deadline, args.overload_duration) <= 0:
        p.error("durations, --timeout and --deadline must be > 0")
    if args.path is None:
        args.path = "/v1/embeddings" if args.api == "openai" else "/embed"
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.table:
        print(markdown_table(args.table))
        return 0
    api = Api(args.api, args.path, args.model, args.dim)
    # The per-phase bounds keep each phase inside the deadline; this is the backstop.
    try:
        asyncio.run(asyncio.wait_for(main_async(args, api), args.deadline + 30))
    except asyncio.TimeoutError:
        print(f"[{args.label}] hard deadline of {args.deadline} s passed; stopped",
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
