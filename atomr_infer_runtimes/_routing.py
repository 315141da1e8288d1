"""Routing decisions, pure: which deployment a model name means, which replica serves.

No trio, no clocks: the cluster feeds these functions its live tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from atomr_infer_core.errors import NotFoundError

__all__ = ["fallback_chain", "least_outstanding", "resolve_deployment"]


def resolve_deployment(model: str, deployments: Mapping[str, str]) -> str:
    """The deployment name a request's ``model`` means.

    ``deployments`` maps deployment name → its ``model``. A deployment name wins; else
    the one deployment serving that model. Raises NotFoundError when none or several
    match (the message lists the names to use instead).
    """
    if model in deployments:
        return model
    matches = sorted(name for name, served in deployments.items() if served == model)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise NotFoundError(
            f"model {model!r} is served by several deployments ({', '.join(matches)}); "
            "send a deployment name as the model",
            model=model,
        )
    known = ", ".join(sorted(deployments)) or "none"
    raise NotFoundError(
        f"no deployment named {model!r} and none serves that model (deployments: {known})",
        model=model,
    )


def fallback_chain(first: str, fallbacks_of: Mapping[str, Sequence[str]]) -> list[str]:
    """``first`` then its fallbacks, depth first, each deployment once."""
    chain: list[str] = []

    def visit(name: str) -> None:
        if name in chain:
            return
        chain.append(name)
        for nxt in fallbacks_of.get(name, ()):
            visit(nxt)

    visit(first)
    return chain


def least_outstanding(
    candidates: Iterable[tuple[int, int]], *, after: int = -1, limit: int | None = None
) -> int | None:
    """The replica index with the fewest outstanding requests.

    ``candidates`` are ``(replica index, outstanding)`` of the replicas that may take
    work. Ties go round-robin: the first tied index greater than ``after`` (the last
    pick), wrapping around, so sequential traffic spreads evenly. Replicas at ``limit``
    outstanding are skipped. ``None`` when no replica qualifies.
    """
    pool = [(idx, n) for idx, n in candidates if limit is None or n < limit]
    if not pool:
        return None
    fewest = min(n for _, n in pool)
    tied = sorted(idx for idx, n in pool if n == fewest)
    for idx in tied:
        if idx > after:
            return idx
    return tied[0]
