"""What tracing costs the gateway: wrk → gateway (mock runtime) with OpenTelemetry off and on.

"on" exports every span and the GenAI metrics over OTLP/HTTP to a stand-in collector in
another process (the testkit's mock collector: real HTTP, answers 200). ``--baseline DIR``
adds a run of another checkout's gateway (e.g. ``git worktree add /tmp/base main``) with
the same interpreter, to show what "off" costs against code without tracing at all.

    .venv/bin/python bench/tracing.py [--duration 5] [--baseline /tmp/base] [--calls 200]

``--calls N`` also counts the Python function calls per request of N requests through an
in-process gateway (bench/_calls.py): a figure that does not move with the load.

Runs are interleaved (off, on, off, on, …) so a noisy neighbour hurts each alike; the
table shows the median of ``--rounds``. "CPU ms/req" is the gateway process's own CPU
time (user + system, from /proc) over the measured run divided by the requests served: on
a shared machine it moves far less with the neighbours' load than req/s does.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway import CHAT, _config, _pin, _read_url, _wait_ready, _wrk

ROOT = Path(__file__).resolve().parents[1]

COLLECTOR = """
import trio
from atomr_infer_testkit import mock_otlp_collector

async def main():
    async with mock_otlp_collector() as collector:
        print(collector.url, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


def _start_collector() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*_pin(1), sys.executable, "-c", COLLECTOR], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _start_gateway(tree: Path, telemetry: str | None) -> tuple[subprocess.Popen[str], str]:
    config = _config(0, "mock", None, 8)
    if telemetry:
        config = f'[telemetry]\nendpoint = "{telemetry}"\n\n' + config
    path = Path(tempfile.mkdtemp()) / "bench.toml"
    path.write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(tree)  # the tree's own packages win over the editable install
    proc = subprocess.Popen(
        [
            *_pin(0),
            sys.executable,
            "-m",
            "atomr_infer",
            "serve",
            "--config",
            str(path),
            "--port",
            "0",
            "--log-level",
            "warning",
        ],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    url = _read_url(proc, "atomr-infer gateway on ")
    _wait_ready(url + "/health/ready")
    return proc, url


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--baseline", type=Path, help="a checkout without tracing, for comparison")
    parser.add_argument("--calls", type=int, default=0, help="count calls over this many requests")
    args = parser.parse_args()
    collector_proc, collector = _start_collector()
    setups: list[tuple[str, Path, str | None]] = [
        ("off", ROOT, None),
        ("on (OTLP to a local collector)", ROOT, collector),
    ]
    if args.baseline:
        setups.insert(0, (f"baseline ({args.baseline.name})", args.baseline.resolve(), None))
    results: dict[tuple[str, bool], list[dict[str, float]]] = {}
    try:
        for round_no in range(args.rounds):
            # each round starts with the next setup: no setup always runs first
            shift = round_no % len(setups)
            for name, tree, telemetry in setups[shift:] + setups[:shift]:
                proc, url = _start_gateway(tree, telemetry)
                try:
                    for stream in (False, True):
                        body = {**CHAT, "stream": stream}
                        _wrk(url + "/v1/chat/completions", body, args.connections, 1)
                        cpu = _cpu_seconds(proc.pid)
                        run = _wrk(
                            url + "/v1/chat/completions", body, args.connections, args.duration
                        )
                        cpu = _cpu_seconds(proc.pid) - cpu
                        run["cpu_ms"] = cpu * 1000 / max(1.0, run["rps"] * args.duration)
                        results.setdefault((name, stream), []).append(run)
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
    finally:
        collector_proc.terminate()
        collector_proc.wait(timeout=10)
    print(f"# tracing cost, gateway with the mock runtime, {time.strftime('%Y-%m-%d')}")
    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, gateway pinned: {'core 0' if _pin(0) else 'no'}; "
        f"wrk -t1 -c{args.connections} {args.duration}s, median of {args.rounds}"
    )
    print()
    print("| tracing | mode | req/s | p50 ms | p99 ms | CPU ms/req | errors |")
    print("|---|---|---|---|---|---|---|")
    for name, _, _ in setups if args.rounds else ():
        for stream in (False, True):
            runs = results[(name, stream)]
            rps = statistics.median(r["rps"] for r in runs)
            p50 = statistics.median(r["p50"] for r in runs)
            p99 = statistics.median(r["p99"] for r in runs)
            cpu = statistics.median(r["cpu_ms"] for r in runs)
            errors = sum(r["errors"] for r in runs)
            mode = "stream" if stream else "json"
            print(
                f"| {name} | {mode} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {cpu:.2f} | {errors:.0f} |"
            )
    if args.calls:
        _print_calls(setups, args.calls)
    return 0


def _print_calls(setups: list[tuple[str, Path, str | None]], requests: int) -> None:
    collector_proc, collector = _start_collector()
    try:
        print()
        print(f"Python calls per request (main thread, {requests} requests, gateway + client):")
        print()
        print("| tracing | json | stream |")
        print("|---|---|---|")
        for name, tree, telemetry in setups:
            counts = []
            for mode in ("json", "stream"):
                command = [sys.executable, str(ROOT / "bench" / "_calls.py"), str(requests), mode]
                if telemetry:
                    command.append(collector)
                env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
                env["PYTHONPATH"] = str(tree)
                out = subprocess.run(
                    command, cwd=tree, env=env, capture_output=True, text=True, check=True
                )
                counts.append(out.stdout.strip())
            print(f"| {name} | {counts[0]} | {counts[1]} |")
    finally:
        collector_proc.terminate()
        collector_proc.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
