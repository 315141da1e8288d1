from __future__ import annotations

import json
import logging
import pickle

import pytest

from atomr_infer_core import Secret
from atomr_infer_core.config import load_config, unstructure

VALUE = "sk-live-7c1d9a2b4e"


def test_secret_never_shows_in_repr_str_or_format() -> None:
    secret = Secret(VALUE)
    rendered = [
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        "%s" % secret,  # noqa: UP031
        format(secret, ">40"),
    ]
    assert all(VALUE not in text for text in rendered)
    assert repr(secret) == "Secret('**********')"


def test_secret_never_shows_in_containers_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret(VALUE)
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("key=%s in %r", secret, {"k": secret})
    assert VALUE not in caplog.text
    assert VALUE not in repr([secret, (secret,)])


def test_secret_is_not_json_serialisable_and_not_picklable() -> None:
    secret = Secret(VALUE)
    with pytest.raises(TypeError):
        json.dumps({"key": secret})
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(secret)


def test_secret_reveal_equality_and_hash() -> None:
    assert Secret(VALUE).reveal() == VALUE
    assert Secret(VALUE) == Secret(VALUE)
    assert Secret(VALUE) != Secret("other")
    assert hash(Secret(VALUE)) == hash(Secret("other"))
    with pytest.raises(AttributeError):
        Secret(VALUE)._value = "x"  # type: ignore[misc]


def test_secret_is_redacted_when_config_is_unstructured() -> None:
    config = load_config({"cluster": {"api_keys": ["${KEY}"]}}, env={"KEY": VALUE})
    assert config.cluster.api_keys[0].reveal() == VALUE
    dumped = json.dumps(unstructure(config))
    assert VALUE not in dumped
    assert VALUE not in repr(config)


def test_secret_requires_str() -> None:
    with pytest.raises(TypeError):
        Secret(123)  # type: ignore[arg-type]
