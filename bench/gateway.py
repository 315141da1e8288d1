"""Gateway throughput and latency: wrk → gateway (one core) → OpenAI-wire upstream.

Three processes: a Node.js OpenAI-wire upstream (bench/upstream.js), the gateway
(`python -m atomr_infer serve`, pinned to one core with taskset when present) proxying
to it through the OpenAI runtime plugin, and wrk. The same load is also sent straight
to the upstream, so the table shows what the gateway adds.

    .venv/bin/python bench/gateway.py [--duration 10] [--backend openai|mock]

``--backend mock`` serves the testkit's mock runtime instead (no upstream hop): the
cost of the HTTP layer and the cluster alone. ``--backend direct`` serves the mock
runner through bench/_direct_gateway.py (no cluster): the HTTP layer alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SERVE_ARGS = ("--port", "0", "--log-level", "warning")
CHAT = {"model": "bench", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16}


def _pin(core: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > core:
        return ["taskset", "-c", str(core)]
    return []


def _wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not become ready in {timeout}s")


def _start_upstream(chunks: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*_pin(1), "node", str(ROOT / "bench" / "upstream.js"), "0", str(chunks)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    return proc, url


def _config(port: int, backend: str, upstream: str | None, chunks: int) -> str:
    head = (
        f'[cluster]\nname = "bench"\nbind = "127.0.0.1:{port}"\n\n[[deployment]]\nname = "bench"\n'
    )
    serving = "[deployment.serving]\nmax_concurrent = 256\n"
    if backend == "mock":
        words = json.dumps(["Hello"] + [f" w{i}" for i in range(1, chunks)])
        return (
            head
            + f'model = "mock"\nruntime = "mock"\n{serving}[deployment.runtime_config]\nchunks = {words}\n'
        )
    return (
        head
        + f'model = "gpt-4o-mini"\nruntime = "openai"\n{serving}'
        + f'[deployment.runtime_config]\nbase_url = "{upstream}/v1"\napi_key = "sk-bench"\n'
    )


def _read_url(proc: subprocess.Popen[str], marker: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if marker in line:
            return next(w for w in line.split() if w.startswith("http://"))
    raise SystemExit(f"the gateway exited before it served (exit code {proc.wait()})")


def _start_direct(chunks: int) -> tuple[subprocess.Popen[str], str]:
    script = str(ROOT / "bench" / "_direct_gateway.py")
    proc = subprocess.Popen(
        [*_pin(0), sys.executable, script, "0", str(chunks)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    url = _read_url(proc, "http://")
    _wait_ready(url + "/health/ready")
    return proc, url


def _start_gateway(config: str) -> tuple[subprocess.Popen[str], str]:
    path = Path(tempfile.mkdtemp()) / "bench.toml"
    path.write_text(config)
    proc = subprocess.Popen(
        [
            *_pin(0),
            sys.executable,
            "-m",
            "atomr_infer",
            "serve",
            "--config",
            str(path),
            *SERVE_ARGS,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    url = _read_url(proc, "atomr-infer gateway on ")
    _wait_ready(url + "/health/ready")
    return proc, url


def _lua(body: dict[str, object]) -> str:
    path = Path(tempfile.mkdtemp()) / "post.lua"
    payload = json.dumps(body).replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.body = "{payload}"\n'
    )
    return str(path)


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _wrk(url: str, body: dict[str, object], connections: int, duration: int) -> dict[str, float]:
    out = subprocess.run(
        [
            *_pin(1),
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            _lua(body),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": p50, "p99": p99, "errors": float(errors.group(1)) if errors else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--backend", choices=["openai", "mock", "direct"], default="openai")
    parser.add_argument("--chunks", type=int, default=8, help="tokens per answer (stream chunks)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    upstream_proc, upstream = (None, None)
    if args.backend == "openai":
        upstream_proc, upstream = _start_upstream(args.chunks)
    if args.backend == "direct":
        gateway_proc, gateway = _start_direct(args.chunks)
    else:
        gateway_proc, gateway = _start_gateway(_config(0, args.backend, upstream, args.chunks))
    rows = []
    try:
        for stream in (False, True):
            body = {**CHAT, "stream": stream}
            for conns in (1, 32):
                # warm-up, then measure
                _wrk(gateway + "/v1/chat/completions", body, conns, 1)
                gw = _wrk(gateway + "/v1/chat/completions", body, conns, args.duration)
                up = (
                    _wrk(upstream + "/v1/chat/completions", body, conns, args.duration)
                    if upstream
                    else None
                )
                rows.append((stream, conns, gw, up))
    finally:
        gateway_proc.terminate()
        gateway_proc.wait(timeout=60)
        if upstream_proc is not None:
            upstream_proc.terminate()
            upstream_proc.wait(timeout=10)
    print(f"# gateway bench ({args.backend} backend), {time.strftime('%Y-%m-%d')}")
    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"gateway pinned: {'core 0' if _pin(0) else 'no'}; {args.chunks} tokens per answer; wrk -t1 {args.duration}s"
    )
    print()
    print(
        "| mode | conc | gateway req/s | gateway p50 ms | gateway p99 ms | upstream req/s | upstream p50 ms | upstream p99 ms | added p50 ms | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for stream, conns, gw, up in rows:
        mode = "stream" if stream else "json"
        if up:
            ups = (
                f"{up['rps']:.0f} | {up['p50']:.2f} | {up['p99']:.2f} | {gw['p50'] - up['p50']:.2f}"
            )
        else:
            ups = "- | - | - | -"
        print(
            f"| {mode} | {conns} | {gw['rps']:.0f} | {gw['p50']:.2f} | {gw['p99']:.2f} | {ups} | {gw['errors']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
