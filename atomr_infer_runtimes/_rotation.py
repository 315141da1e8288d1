"""Credential rotation: rebuild the runner sessions of one deployment or all, in place.

A rebuild asks each serving replica's runner for ``rebuild_session(MANUAL)``: a remote
runner fetches its credential again (a key file or environment variable re-read, a token
refreshed) and swaps in a new HTTP session; requests in flight keep the session they
borrowed until they finish, so none is dropped. Replicas that are down or starting are
skipped: they open a fresh session when they start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from atomr_infer_core import SessionRebuildCause
from atomr_infer_core.errors import InferenceError, NotFoundError

from ._deployments import DeploymentRuntime, ReplicaState

__all__ = ["RotationResult", "rotate_credentials"]


@attrs.frozen(kw_only=True)
class RotationResult:
    """What rotating one deployment's credentials did."""

    deployment: str
    #: replicas whose session was rebuilt
    rebuilt: int
    #: serving replicas whose rebuild failed (their old session keeps serving)
    failed: int = 0
    #: why the first failure happened (never a secret: errors carry none)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0


async def _rotate_one(runtime: DeploymentRuntime) -> RotationResult:
    rebuilt = failed = 0
    error: str | None = None
    for replica in runtime.replicas:
        if replica.state is not ReplicaState.SERVING:
            continue
        try:
            await replica.runner.rebuild_session(SessionRebuildCause.MANUAL)
        except InferenceError as exc:
            failed += 1
            error = error or f"replica {replica.index}: {exc.message}"
        else:
            rebuilt += 1
    return RotationResult(deployment=runtime.name, rebuilt=rebuilt, failed=failed, error=error)


async def rotate_credentials(
    deployments: Mapping[str, DeploymentRuntime], order: Sequence[str], name: str | None = None
) -> list[RotationResult]:
    """Rotate ``name``'s credentials (every deployment's when ``None``), one by one.

    Raises:
        NotFoundError: no deployment is called ``name``.
    """
    if name is not None and name not in deployments:
        raise NotFoundError(f"no deployment named {name!r}; GET /v1/models lists them", model=name)
    names = [name] if name is not None else [n for n in order if n in deployments]
    return [await _rotate_one(deployments[n]) for n in names]
