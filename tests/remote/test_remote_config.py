"""``RemoteConfig``: the shared keys of every network provider's runtime_config."""

from __future__ import annotations

import attrs
import pytest

from atomr_infer_core import Secret, Timeouts
from atomr_infer_core.config import structure
from atomr_infer_core.errors import ConfigError, UnauthorizedError
from atomr_infer_remote import (
    EnvCredential,
    FileCredential,
    RemoteConfig,
    StaticCredential,
    credential_problem,
)


@attrs.frozen(kw_only=True)
class EchoConfig(RemoteConfig):
    base_url: str = "http://127.0.0.1:1"

    def default_env(self) -> tuple[str, ...]:
        return ("ECHO_KEY", "ECHO_OTHER_KEY")


def test_the_shared_keys_structure_strictly_in_a_subclass() -> None:
    config = structure(
        {"api_key": "sk", "fast_client": False, "max_connections": 4, "base_url": "http://x"},
        EchoConfig,
        path="runtime_config",
    )
    assert config == EchoConfig(
        api_key=Secret("sk"), fast_client=False, max_connections=4, base_url="http://x"
    )
    options = config.http_options(Timeouts(connect_timeout=2.0))
    assert (options.fast_client, options.max_connections, options.http2) == (False, 4, True)
    assert options.timeouts.connect_timeout == 2.0
    with pytest.raises(ConfigError, match=r"runtime_config\.fast_clients"):
        structure({"fast_clients": False}, EchoConfig, path="runtime_config")


async def test_the_credential_comes_from_the_key_the_file_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert EchoConfig(api_key=Secret("sk")).credentials() == StaticCredential(Secret("sk"))
    assert EchoConfig(api_key_file="/k").credentials() == FileCredential("/k")
    monkeypatch.delenv("ECHO_KEY", raising=False)
    monkeypatch.delenv("ECHO_OTHER_KEY", raising=False)
    env = EchoConfig().credentials()
    assert env == EnvCredential("ECHO_KEY", fallbacks=("ECHO_OTHER_KEY",))
    assert credential_problem(env) == (
        "environment variable ECHO_KEY is not set: export it, or set "
        "runtime_config.api_key in the deployment"
    )
    with pytest.raises(UnauthorizedError):
        await env.credential()
    monkeypatch.setenv("ECHO_OTHER_KEY", " second ")
    assert await env.credential() == Secret("second")
    monkeypatch.setenv("ECHO_KEY", "first")
    assert await env.credential() == Secret("first")
    assert EchoConfig(api_key_env="MINE").credentials() == EnvCredential("MINE")


async def test_an_optional_key_sends_none_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ECHO_KEY", raising=False)
    optional = EnvCredential("ECHO_KEY", required=False)
    assert credential_problem(optional) is None
    assert await optional.credential() is None
    assert RemoteConfig().credentials() == StaticCredential(None)  # no variable of its own
