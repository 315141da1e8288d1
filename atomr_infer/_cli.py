"""``python -m atomr_infer``: serve, plugins, check, status, demo."""

from __future__ import annotations

import argparse
import sys


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atomr-infer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the OpenAI-compatible gateway")
    serve.add_argument("--config", help="project file (TOML); default: the embedded default")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-level", default="info")
    check = sub.add_parser("check", help="validate a config file and print its deployments")
    check.add_argument("--config", required=True)
    return parser


def _check(path: str) -> int:
    from atomr_infer_core import ConfigError
    from atomr_infer_core.config import load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    for dep in config.deployments:
        print(
            f"{dep.name:<32} model={dep.model:<40} runtime={dep.effective_runtime()} replicas={dep.replicas}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    if args.command == "serve":
        print("atomr-infer serve: the gateway is not yet available in this build.", file=sys.stderr)
        return 2
    return 2
