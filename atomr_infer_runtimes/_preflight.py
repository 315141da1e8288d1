"""Start-up checks: every permanent configuration problem, found before anything serves.

``check`` and ``serve`` run the same checks, and ``open_cluster`` runs the deployment
part: each deployment's runtime is installed, its ``runtime_config`` structures, and its
credential can be had (an unset ``OPENAI_API_KEY``, an unreadable key file); a gateway's
bind needs keys unless it is loopback or ``allow_unauthenticated``. Problems come back
together, each with its key path, so one run of ``check`` lists them all.
"""

from __future__ import annotations

from typing import Any

from atomr_infer_core import Config, Deployment, RuntimePlugin
from atomr_infer_core.errors import ConfigError
from atomr_infer_remote import FileCredential, credential_problem

__all__ = ["credential_problems", "deployment_problems", "gateway_problems"]

Problems = list[tuple[str, str]]


def _clean(problems: Any) -> Problems:
    # core's structure() joins a nested path with an extra dot ("x..y")
    return [(p.replace("..", "."), m) for p, m in problems]


def credential_problems(runtime_config: Any, path: str) -> Problems:
    """The credential problem of one deployment's ``runtime_config`` (empty when fine)."""
    credentials = getattr(runtime_config, "credentials", None)
    if not callable(credentials):
        return []
    provider = credentials()
    problem = credential_problem(provider)
    if problem is None:
        return []
    key = "api_key_file" if isinstance(provider, FileCredential) else "api_key"
    return [(f"{path}.runtime_config.{key}", problem)]


def check_deployment(
    deployment: Deployment, registry: Any, path: str
) -> tuple[RuntimePlugin | None, Any, Problems]:
    """Resolve one deployment: its plugin, structured ``runtime_config`` and problems."""
    try:
        plugin = registry.runtime_for(deployment, path=path)
        runtime_config = plugin.structure_config(
            deployment.runtime_config, path=f"{path}.runtime_config"
        )
    except ConfigError as exc:
        return None, None, _clean(exc.problems)
    return plugin, runtime_config, credential_problems(runtime_config, path)


def deployment_problems(config: Config, registry: Any) -> Problems:
    """Every deployment's runtime, ``runtime_config`` and credential problems."""
    problems: Problems = []
    for index, deployment in enumerate(config.deployments):
        problems += check_deployment(deployment, registry, f"deployment[{index}]")[2]
    return problems


def gateway_problems(config: Config, host: str | None = None) -> Problems:
    """What stops ``serve`` from binding: a public address without API keys."""
    from .gateway._auth import all_keys, check_bind_allowed

    settings = config.cluster
    try:
        check_bind_allowed(
            settings.host if host is None else host,
            keys=all_keys(settings.api_keys, config.keys),
            allow_unauthenticated=settings.allow_unauthenticated,
        )
    except ConfigError as exc:
        return _clean(exc.problems)
    return []
