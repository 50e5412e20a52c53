"""The HTTP API under load, on loopback (issue 10: item 2 and the load drill).

Needs the local stack (``synthray stack up``); deploys the Serve app if it is not running and
registers an untrained generator of ``--arch`` as ``bench-http@champion`` (the work per image
is what matters, not what it draws). Three phases, all bounded in count and time:

1. **HTTP vs in-process**, n = 64: median seconds (interleaved rounds) of ``sampler.generate(64, seed)`` in this
   process against ``POST /v1/synthesize`` (npz and png-zip) on the same model.
   ratio = in-process s ÷ HTTP s (goals: npz ≥ 0.9, png-zip ≥ 0.85; < 1 is the cost of HTTP, encoding
   and Serve). The same ratio is taken for ``--knee-arch`` (the paper's 210² generator) with
   ``--knee-repeats`` rounds: its forward is ~60× longer, so the fixed cost per request weighs less.
2. **Load**: ``--clients`` concurrent clients (async httpx) for ``--seconds`` s, n drawn from
   {1, 4, 16, 64}: p50/p95/p99 latency, requests/s, images/s, errors (goal 0).
3. **Overload**: ``--overload-clients`` clients asking for n = 64 for ``--overload-seconds``:
   beyond capacity the API must answer 503 with Retry-After (never another 5xx), the Serve
   processes' memory must stay bounded, and a plain request must succeed again afterwards
   (time to recovery).
"""

from __future__ import annotations

import asyncio
import os
import platform
import random
import time
from pathlib import Path

import click
import httpx
import numpy as np
import psutil
from _common import bench_generator, serve_client, write_json

from services.serving.app import parse_server_timing

NS = (1, 4, 16, 64)


def _serve_rss_mb() -> float:
    """Resident memory of this machine's Ray Serve replica and proxy processes, in MB."""
    total = 0
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "ServeReplica" in cmd or "ProxyActor" in cmd or "ServeController" in cmd:
            total += proc.info["memory_info"].rss
    return total / 2**20


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    p = np.percentile(values, [50, 95, 99])
    return {"p50": float(p[0]), "p95": float(p[1]), "p99": float(p[2])}


async def _drive(url: str, headers: dict, clients: int, seconds: float, pick_n, model: str) -> dict:
    """``clients`` loops posting /v1/synthesize until ``seconds`` pass; latencies and statuses."""
    deadline = time.monotonic() + seconds
    latencies, statuses, images, retry_after = [], {}, 0, 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as client:
        async def one(i: int) -> None:
            nonlocal images, retry_after
            rng = random.Random(i)
            while time.monotonic() < deadline:
                n = pick_n(rng)
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/synthesize", json={"model": model, "n": n, "seed": rng.randrange(10**6),
                                                                   "format": "npz"})
                    code = r.status_code
                except httpx.HTTPError as err:
                    code = type(err).__name__
                statuses[code] = statuses.get(code, 0) + 1
                if code == 200:
                    latencies.append(time.perf_counter() - t0)
                    images += n
                elif code == 503:
                    retry_after += "retry-after" in r.headers
                    await asyncio.sleep(float(r.headers.get("retry-after", 1)) if seconds > 30 else 0.05)

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(clients)))
        elapsed = time.monotonic() - started
    ok = statuses.get(200, 0)
    return {"clients": clients, "seconds": elapsed, "requests": sum(statuses.values()), "ok": ok,
            "statuses": {str(k): v for k, v in statuses.items()}, "requests_per_s": ok / elapsed,
            "images_per_s": images / elapsed, "latency_s": _percentiles(latencies),
            "errors": sum(v for k, v in statuses.items() if k not in (200, 503)), "retry_after_on_503": retry_after}


def _interleaved(cases: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of each of ``repeats`` rounds per case, the cases taking turns (after one warm-up
    each) so that they share the machine's noise."""
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def _ratio(http, arch: str, name: str, repeats: int) -> tuple[str, dict]:
    """``name@champion`` (an untrained ``arch``) and phase 1's medians and ratios for it."""
    model, sampler = bench_generator(arch, name)

    timings: dict[str, list[dict[str, float]]] = {"npz": [], "png-zip": []}

    def post(fmt: str):
        r = http.post("/v1/synthesize", json={"model": model, "n": 64, "seed": 1, "format": fmt})
        r.raise_for_status()
        timings[fmt].append(parse_server_timing(r.headers["server-timing"]))

    # Medians of interleaved rounds: on this VM the best-of-k of a 0.1 s forward swings by 50 %
    # from run to run (the two processes' OpenMP threads spin on the same two cores).
    def hop():  # every hop of a synthesize request, no render: the Synthesizer answers 422 (unknown class)
        assert http.post("/v1/synthesize", json={"model": model, "n": 1, "seed": 1, "class": "?"}).status_code == 422

    cases = {"in-process": lambda: sampler.generate(64, 1), "npz": lambda: post("npz"), "png-zip": lambda: post("png-zip"),
             "healthz": lambda: http.get("/healthz").raise_for_status(), "hop": hop}
    times = _interleaved(cases, repeats)
    median = {case: float(np.median(t)) for case, t in times.items()}
    best = {case: min(t) for case, t in times.items()}
    # Where a request's time goes beyond the forward (medians, ms): client + proxy + Api
    # (healthz), + the Api → Synthesizer call and back (hop), + the n=64 payload and render (npz).
    hops_ms = {"healthz (client, proxy, Api)": 1e3 * median.pop("healthz"),
               "hop (+ Api → Synthesizer → 422)": 1e3 * median.pop("hop")}
    # Inside the request (the Api's Server-Timing, ms): Serve's body callback to the proxy, the
    # Synthesizer's render (queue + forward) and pack, the Api's whole window; the client's time
    # minus that window is the client, the proxy and the transfer.
    server_ms = {}
    for fmt, seen in timings.items():
        server_ms[fmt] = {name: float(np.median([t[name] for t in seen[1:]])) for name in seen[-1]}  # [0]: warm-up
        server_ms[fmt]["client, proxy, transfer"] = 1e3 * median[fmt] - server_ms[fmt]["api"]
    in_process = median.pop("in-process")
    click.echo(f"{arch} n=64: in-process {in_process:.3f} s, HTTP npz {median['npz']:.3f} s, png-zip "
               f"{median['png-zip']:.3f} s (ratios {in_process / median['npz']:.3f}, {in_process / median['png-zip']:.3f})")
    click.echo(f"  hops without a render (median ms): {', '.join(f'{k} {v:.1f}' for k, v in hops_ms.items())}")
    for fmt, parts in server_ms.items():
        click.echo(f"  {fmt} Server-Timing (median ms): {', '.join(f'{k} {v:.2f}' for k, v in parts.items())}")
    return model, {"arch": arch, "repeats": repeats, "in_process_s": in_process, "http_s": median, "best_s": best,
                   "hops_ms": hops_ms, "server_timing_ms": server_ms,
                   "best_ratio_npz": best["in-process"] / best["npz"], "ratio_npz": in_process / median["npz"],
                   "ratio_png_zip": in_process / median["png-zip"]}


@click.command()
@click.option("--arch", default="wgan-gp-knee-small", show_default=True, help="generator preset to serve")
@click.option("--repeats", type=click.IntRange(1), default=30, show_default=True)
@click.option("--knee-arch", default="wgan-gp-knee", show_default=True, help="second generator for the ratio")
@click.option("--knee-repeats", type=click.IntRange(0), default=5, show_default=True, help="0 skips it")
@click.option("--clients", type=click.IntRange(1, 64), default=10, show_default=True)
@click.option("--seconds", type=click.FloatRange(5, 300), default=60, show_default=True)
@click.option("--overload-clients", type=click.IntRange(1, 400), default=200, show_default=True)
@click.option("--overload-seconds", type=click.FloatRange(5, 120), default=20, show_default=True)
@click.option("--ratio-only", is_flag=True, help="only phase 1 (HTTP vs in-process); no JSON written")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/http_load.json"), show_default=True)
def main(arch, repeats, knee_arch, knee_repeats, clients, seconds, overload_clients, overload_seconds, ratio_only,
         out) -> None:
    http, url, headers = serve_client()
    model, ratios = _ratio(http, arch, "bench-http", repeats)
    knee = _ratio(http, knee_arch, "bench-http-knee", knee_repeats)[1] if knee_repeats else None
    if ratio_only:
        return

    rss_before = _serve_rss_mb()
    load = asyncio.run(_drive(url, headers, clients, seconds, lambda rng: rng.choice(NS), model))
    click.echo(f"load: {load['ok']} ok of {load['requests']}, {load['images_per_s']:.1f} img/s, "
               f"latency {load['latency_s']}, errors {load['errors']}, 503s {load['statuses'].get('503', 0)}")
    overload = asyncio.run(_drive(url, headers, overload_clients, overload_seconds, lambda rng: 64, model))
    rss_after = _serve_rss_mb()
    click.echo(f"overload: statuses {overload['statuses']}, Retry-After on {overload['retry_after_on_503']} 503s")
    started, recovered = time.monotonic(), None
    while time.monotonic() - started < 120:
        try:
            if http.post("/v1/synthesize", json={"model": model, "n": 1, "seed": 0}).status_code == 200:
                recovered = time.monotonic() - started
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    report = {
        "bench": "http_load", "arch": arch, "n": 64,
        "statistic": f"median of {repeats} interleaved rounds", **ratios, "knee": knee,
        "load": load, "overload": overload, "serve_rss_mb": {"before": rss_before, "after": rss_after},
        "recovery_s": recovered, "cpus": os.cpu_count(), "machine": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }
    write_json(out, report)
    click.echo(f"ratio HTTP/in-process: npz {report['ratio_npz']:.2f} (goal 0.9), png-zip {report['ratio_png_zip']:.2f} "
               f"(goal 0.85); recovered after overload in {recovered} s; wrote {out}")


if __name__ == "__main__":
    main()
