"""The gemini runtime's ``ModelRunner``: the remote engine with the ``generateContent``
provider (:mod:`._wire`), and for Vertex AI with refreshable tokens a timer that refreshes
the token.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from atomr_infer_core import RequestKind, RuntimeKind, SessionRebuildCause
from atomr_infer_core.errors import UnauthorizedError
from atomr_infer_remote import EngineRunner

from ._config import GeminiConfig
from ._wire import GeminiProvider

__all__ = ["GeminiRunner"]

log = logging.getLogger(__name__)


class GeminiRunner(EngineRunner):
    """A ``ModelRunner`` for one replica of a gemini deployment (see EngineRunner).

    ``run`` also owns, for Vertex AI tokens that are not static, a task refreshing the
    token every ``token_refresh_interval``.
    """

    runtime_kind = RuntimeKind(RuntimeKind.GEMINI)
    capabilities = frozenset({RequestKind.CHAT, RequestKind.COMPLETION})
    model_prefixes = ("google/",)

    def make_provider(self, config: GeminiConfig, model: str) -> GeminiProvider:
        return GeminiProvider(config, model)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.engine.run)
            if self.credentials_supplied or self.config.refreshes_tokens:
                nursery.start_soon(self._refresh_tokens)
            task_status.started()

    async def _refresh_tokens(self) -> None:
        while True:
            await trio.sleep(self.config.token_refresh_interval)
            try:
                await self.engine.rebuild_session(SessionRebuildCause.REMOTE_CONFIG_CHANGE)
            except UnauthorizedError as error:
                # the old token stays; a 401 will try again
                log.warning("gemini: refreshing the access token failed: %s", error.message)
