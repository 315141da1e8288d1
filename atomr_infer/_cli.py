"""``python -m atomr_infer``: serve, plugins, check, status, demo, export-onnx.

Heavy imports (trio, the gateway, httpx, runtime plugins) happen inside the commands,
so ``--help`` is instant and a remote-only ``serve`` never imports torch or onnxruntime.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

NO_LOCAL_RUNTIME = (
    "atomr-infer serve: no --config given and no installed plugin provides a default "
    "deployment.\nInstall a local runtime (`pip install atomr-infer-torch`) or pass "
    "--config atomr.toml (see docs/configuration.md)."
)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atomr-infer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the OpenAI-compatible gateway")
    serve.add_argument("--config", help="project file (TOML); default: the embedded default")
    serve.add_argument("--host", help="override [cluster].bind's host")
    serve.add_argument("--port", type=int, help="override [cluster].bind's port (0: any free port)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub.add_parser("plugins", help="list installed runtime plugins")
    check = sub.add_parser("check", help="validate a config file and print its deployments")
    check.add_argument("--config", required=True)
    status = sub.add_parser("status", help="show a running gateway's deployments")
    status.add_argument("--url", default="http://127.0.0.1:8080")
    status.add_argument("--api-key", default=os.environ.get("ATOMR_API_KEY"))
    sub.add_parser("demo", help="remote-only demo against the testkit's mock OpenAI server")
    export = sub.add_parser("export-onnx", help="export a Hugging Face model to ONNX")
    export.add_argument("model")
    export.add_argument("out")
    return parser


# ---------------------------------------------------------------- plugins / check


def _registry() -> Any:
    from atomr_infer_runtimes._plugins import PluginRegistry

    registry = PluginRegistry()
    registry.load_entry_points()
    return registry


def _plugins() -> int:
    registry = _registry()
    infos = registry.infos
    if not infos:
        print("no runtime plugins installed (try `pip install atomr-infer-openai`)")
        return 0
    print(f"{'plugin':<14} {'version':<10} {'distribution':<24} {'runtimes':<18} model patterns")
    for info in infos:
        patterns = ", ".join(info.model_patterns) or "-"
        runtimes = ", ".join(map(str, info.runtimes)) or "-"
        print(
            f"{info.name:<14} {info.version or '-':<10} {info.distribution or '-':<24} "
            f"{runtimes:<18} {patterns}"
        )
        if info.error:
            print(f"  ! failed to load: {info.error}")
    return 0


def _startup_problems(
    config: Any, problems: list[tuple[str, str]], registry: Any, host: str | None = None
) -> list[tuple[str, str]]:
    """``problems`` plus what ``serve`` would refuse at start-up, each path once."""
    from atomr_infer_runtimes._preflight import deployment_problems, gateway_problems

    if config is None:
        return problems
    seen = {path for path, _ in problems}
    for path, message in deployment_problems(config, registry) + gateway_problems(config, host):
        if path not in seen:
            seen.add(path)
            problems.append((path, message))
    return problems


def _check(path: str) -> int:
    from atomr_infer_core import ConfigError
    from atomr_infer_core.config import check_config

    # plugins first: their model patterns (mock-*) steer runtime inference while loading
    registry = _registry()
    config, problems = check_config(path)
    problems = _startup_problems(config, problems, registry)
    if problems:
        print(f"{path}: invalid\n{ConfigError(problems)}", file=sys.stderr)
        return 1
    print(f"{path}: ok — cluster {config.cluster.name!r} on {config.cluster.bind}")
    for dep in config.deployments:
        runtime = registry.runtime_for(dep)
        print(
            f"  {dep.name:<28} model={dep.model:<32} runtime={runtime.name!s:<10} "
            f"replicas={dep.replicas} ({runtime.package or 'built in'})"
        )
    return 0


# ---------------------------------------------------------------- serve


def _default_config(registry: Any) -> Any:
    from atomr_infer_core import Config

    deployments = []
    for runtime in registry.runtimes.values():
        deployments.extend(runtime.default_deployments)
    if not deployments:
        return None
    return Config(deployments=tuple(deployments))


def _banner(url: str, config: Any) -> str:
    model = config.deployments[0].name if config.deployments else "MODEL"
    key = "$ATOMR_API_KEY" if config.cluster.api_keys else "unused"
    auth = ' -H "Authorization: Bearer $ATOMR_API_KEY"' if config.cluster.api_keys else ""
    names = ", ".join(d.name for d in config.deployments)
    return (
        f"atomr-infer gateway on {url} serving: {names}\n"
        f"  curl {url}/v1/chat/completions{auth} -H 'content-type: application/json' \\\n"
        f'       -d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}]}}\'\n'
        f"  python -c \"from openai import OpenAI; c = OpenAI(base_url='{url}/v1', api_key='{key}'); "
        f"print(c.chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'Hello'}}]).choices[0].message.content)\"\n"
        "  Ctrl-C (SIGINT) or SIGTERM drains in-flight requests and exits."
    )


async def _serve_async(config: Any, host: str | None, port: int | None) -> None:

    import trio

    from atomr_infer import open_cluster
    from atomr_infer_runtimes.gateway import serve_gateway

    log = logging.getLogger("atomr_infer.cli")
    stop = trio.Event()
    async with open_cluster(config) as cluster, trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    if stop.is_set():
                        log.warning("second signal: cancelling in-flight requests now")
                        nursery.cancel_scope.cancel()
                        return
                    log.warning(
                        "%s: draining (up to %ss for in-flight requests)",
                        signal.Signals(signum).name,
                        cluster.config.cluster.shutdown_grace,
                    )
                    stop.set()

        async def run_gateway(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            await serve_gateway(
                cluster, host=host, port=port, shutdown_trigger=stop.wait, task_status=task_status
            )
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_signals)
        url = await nursery.start(run_gateway)
        print(_banner(url, cluster.config), flush=True)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _serve(args: argparse.Namespace) -> int:
    import trio

    from atomr_infer_core import ConfigError
    from atomr_infer_core.config import check_config

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    registry = _registry()
    if args.config:
        config, problems = check_config(args.config)
    else:
        config, problems = _default_config(registry), []
        if config is None:
            print(NO_LOCAL_RUNTIME, file=sys.stderr)
            return 1
    # every permanent problem at once, before anything starts (as `check` reports them)
    problems = _startup_problems(config, problems, registry, args.host)
    if problems:
        print(
            f"{args.config or 'atomr-infer serve'}: invalid\n{ConfigError(problems)}",
            file=sys.stderr,
        )
        return 1
    try:
        trio.run(_serve_async, config, args.host, args.port)
    except ConfigError as exc:
        print(f"atomr-infer serve: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        config_errors, rest = group.split(ConfigError)
        if config_errors is None or rest is not None:
            raise
        for exc in _leaves(config_errors):
            print(f"atomr-infer serve: {exc}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- status


def _status(url: str, api_key: str | None) -> int:
    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url.rstrip("/") + "/v1/status", headers=headers, timeout=10.0)
    except httpx.HTTPError as exc:
        print(f"cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"{url}/v1/status answered {response.status_code}: {response.text}", file=sys.stderr)
        return 1
    body = response.json()
    print(f"cluster {body.get('name')!r} at {url}: {'ready' if body.get('ready') else 'NOT ready'}")
    print(
        f"{'deployment':<24} {'runtime':<10} {'state':<10} {'replicas':<9} {'breaker':<10} spend (USD)"
    )
    for dep in body.get("deployments", []):
        print(
            f"{dep.get('name', '?'):<24} {dep.get('runtime', '-')!s:<10} {dep.get('state', '-')!s:<10} "
            f"{_replicas(dep):<9} {_breaker(dep)!s:<10} {_spend(dep)}"
        )
        if dep.get("reason"):
            print(f"  reason: {dep['reason']}")
    return 0


def _replicas(dep: dict[str, Any]) -> str:
    replicas = dep.get("replicas", "-")
    if isinstance(replicas, list):
        up = sum(1 for r in replicas if isinstance(r, dict) and r.get("state") == "serving")
        return f"{up}/{len(replicas)}"
    return str(replicas)


def _breaker(dep: dict[str, Any]) -> Any:
    for key in ("breaker", "breaker_state", "circuit"):
        if key in dep:
            value = dep[key]
            return value.get("state", value) if isinstance(value, dict) else value
    return "-"


def _spend(dep: dict[str, Any]) -> str:
    if "spend_hour_usd" in dep:
        return f"{dep['spend_hour_usd']:.4f}/h {dep.get('spend_day_usd', 0.0):.4f}/day"
    for key in ("spend", "spend_usd"):
        if key in dep:
            value = dep[key]
            return f"{value:.4f}" if isinstance(value, int | float) else str(value)
    return "-"


# ---------------------------------------------------------------- export-onnx


def _export_onnx(model: str, out: str) -> int:
    try:
        from atomr_infer_torch import export_onnx
    except ImportError:
        print(
            "export-onnx needs the torch runtime plugin: `pip install atomr-infer-torch`",
            file=sys.stderr,
        )
        return 1
    path = export_onnx(model, out)
    print(f"exported {model} to {path or out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    if args.command == "plugins":
        return _plugins()
    if args.command == "serve":
        return _serve(args)
    if args.command == "status":
        return _status(args.url, args.api_key)
    if args.command == "demo":
        from atomr_infer._demo import run_demo

        return run_demo()
    if args.command == "export-onnx":
        return _export_onnx(args.model, args.out)
    return 2
