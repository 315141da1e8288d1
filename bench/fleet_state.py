"""What the state backend adds per request: memory vs redis strict, through the gateway.

wrk → the gateway (`python -m atomr_infer serve`, pinned to core 0 when taskset is there)
serving the testkit's mock runtime (no upstream hop, so the state backend's cost shows),
with RPM, TPM, a concurrency cap and an hourly budget set (none of them binding), so each
request does an acquire, a release, a reserve and a settle. The redis rows use a
`redis-server` this script starts on a free loopback port.

    .venv/bin/python bench/fleet_state.py [--duration 5] [--rounds 2]
    .venv/bin/python bench/fleet_state.py --workers     # redis strict: --workers 2 vs 1

``--workers`` compares the throughput (concurrency 32) of one gateway process with
``serve --workers 2`` on the same redis state, unpinned (both cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway import CHAT, ROOT, _read_url, _start_gateway, _wait_ready, _wrk

DEPLOYMENT = """
[[deployment]]
name = "bench"
model = "mock"
runtime = "mock"
[deployment.serving]
max_concurrent = 256
[deployment.rate_limits]
requests_per_minute = 100000000
tokens_per_minute = 1000000000000
concurrent_requests = 100000
[deployment.budget]
max_spend_per_hour_usd = 1000000000.0
[deployment.runtime_config]
chunks = ["Hello", " w1", " w2", " w3", " w4", " w5", " w6", " w7"]
"""


NO_PERSISTENCE = ("--save", "", "--appendonly", "no")


def _config(state: str) -> str:
    return f'[cluster]\nname = "bench"\nbind = "127.0.0.1:0"\n\n{state}\n{DEPLOYMENT}'


def _start_redis() -> tuple[subprocess.Popen[str], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", *NO_PERSISTENCE],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Ready to accept connections" in line:
            return proc, f"redis://127.0.0.1:{port}/0"
    raise SystemExit("redis-server did not start")


def _print_machine(args: argparse.Namespace) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# state backend bench, {time.strftime('%Y-%m-%d')}")
    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, load average {load:.1f}; wrk -t1 {args.duration}s, "
        f"best of {args.rounds} interleaved rounds"
    )
    print()


def _start_workers(config: str, workers: int) -> tuple[subprocess.Popen[str], str]:
    path = Path(tempfile.mkdtemp()) / "bench.toml"
    path.write_text(config)
    command = [sys.executable, "-m", "atomr_infer", "serve", "--config", str(path)]
    command += ["--port", "0", "--log-level", "warning", "--workers", str(workers)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    url = _read_url(proc, "atomr-infer gateway on ")
    _wait_ready(url + "/health/ready")
    return proc, url


def _compare_workers(redis_url: str, duration: int, rounds: int) -> None:
    state = f'[state]\nbackend = "redis"\nurl = "{redis_url}"\n'
    best: dict[int, dict[str, float]] = {}
    for _ in range(rounds):
        for workers in (1, 2):
            proc, url = _start_workers(_config(state), workers)
            try:
                _wrk(url + "/v1/chat/completions", CHAT, 32, 1)
                got = _wrk(url + "/v1/chat/completions", CHAT, 32, duration)
                if workers not in best or got["rps"] > best[workers]["rps"]:
                    best[workers] = got
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    print("| workers | conc | req/s | p50 ms | p99 ms | vs 1 worker | errors |")
    print("|---|---|---|---|---|---|---|")
    for workers, r in sorted(best.items()):
        ratio = r["rps"] / best[1]["rps"]
        print(
            f"| {workers} | 32 | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {ratio:.2f}x | {r['errors']:.0f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved rounds; the best of each is shown"
    )
    parser.add_argument("--workers", action="store_true", help="compare --workers 2 with 1")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    redis_proc, redis_url = _start_redis()
    if args.workers:
        try:
            _print_machine(args)
            _compare_workers(redis_url, args.duration, args.rounds)
        finally:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
        return 0
    backends = {
        "memory": '[state]\nbackend = "memory"\n',
        "redis strict": f'[state]\nbackend = "redis"\nurl = "{redis_url}"\nmode = "strict"\n',
    }
    best: dict[tuple[str, int], dict[str, float]] = {}
    try:
        for _ in range(args.rounds):  # interleaved: load from other jobs hits both alike
            for name, state in backends.items():
                gateway_proc, gateway = _start_gateway(_config(state))
                try:
                    for conns in (1, 32):
                        _wrk(gateway + "/v1/chat/completions", CHAT, conns, 1)  # warm-up
                        got = _wrk(gateway + "/v1/chat/completions", CHAT, conns, args.duration)
                        seen = best.get((name, conns))
                        if seen is None or got["p50"] < seen["p50"]:
                            best[(name, conns)] = got
                finally:
                    gateway_proc.terminate()
                    gateway_proc.wait(timeout=60)
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
    _print_machine(args)
    print("| backend | conc | req/s | p50 ms | p99 ms | added p50 ms vs memory | errors |")
    print("|---|---|---|---|---|---|---|")
    rows = [(name, conns, r) for (name, conns), r in best.items()]
    base = {conns: r["p50"] for name, conns, r in rows if name == "memory"}
    for name, conns, r in rows:
        added = r["p50"] - base[conns]
        print(
            f"| {name} | {conns} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
            f"{added:+.2f} | {r['errors']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
