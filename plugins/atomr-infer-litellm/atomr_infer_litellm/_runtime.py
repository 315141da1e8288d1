"""The litellm runtime: a LiteLLM proxy spoken to with the openai plugin's code."""

from __future__ import annotations

import attrs

from atomr_infer_core import Deployment, RetryPolicy, RunnerContext, RuntimeKind
from atomr_infer_openai import OPENAI_PRICES, OpenAIConfig, OpenAIRunner
from atomr_infer_remote import RemoteConfig, registers, remote_plugin

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "PLUGIN",
    "LiteLLMConfig",
    "LiteLLMRunner",
    "register_runtimes",
    "with_default_retries",
]

#: LiteLLM retries on its own; client retries on top would multiply (the original's choice)
DEFAULT_MAX_RETRIES = 1


@attrs.frozen(kw_only=True)
class LiteLLMConfig(RemoteConfig):
    """Where the LiteLLM proxy listens and how to authenticate to it.

    The key (a LiteLLM virtual or master key) comes from ``api_key``, else
    ``api_key_file``, else the ``LITELLM_API_KEY`` environment variable; a proxy without
    auth needs none.
    """

    base_url: str = "http://127.0.0.1:4000/v1"

    def default_env(self) -> tuple[str, ...]:
        return ("LITELLM_API_KEY",)

    def key_required(self) -> bool:
        return False

    def to_openai(self) -> OpenAIConfig:
        """The same endpoint as an :class:`OpenAIConfig` (LiteLLM speaks OpenAI's wire)."""
        shared = {f.name: getattr(self, f.name) for f in attrs.fields(RemoteConfig)}
        shared["api_key_env"] = self.env_variables()[0]
        return OpenAIConfig(
            **shared, base_url=self.base_url, api_key_required=False, send_top_k=True
        )


def with_default_retries(deployment: Deployment) -> Deployment:
    """``max_retries = 1`` when ``[deployment.retry]`` is left at its defaults."""
    if deployment.retry != RetryPolicy():
        return deployment
    return attrs.evolve(deployment, retry=RetryPolicy(max_retries=DEFAULT_MAX_RETRIES))


class LiteLLMRunner(OpenAIRunner):
    """An :class:`OpenAIRunner` reporting runtime ``litellm``, stripping ``litellm/``."""

    runtime_kind = RuntimeKind(RuntimeKind.LITELLM)
    model_prefixes = ("litellm/",)

    def __init__(
        self, deployment: Deployment, config: LiteLLMConfig, context: RunnerContext | None = None
    ) -> None:
        super().__init__(with_default_retries(deployment), config.to_openai(), context)


PLUGIN = remote_plugin(
    LiteLLMRunner,
    config_class=LiteLLMConfig,
    model_patterns=("litellm/*", "*via-litellm*"),
    prices=OPENAI_PRICES,
    description="a LiteLLM proxy (OpenAI wire)",
)
register_runtimes = registers(PLUGIN)
