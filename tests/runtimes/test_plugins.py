"""The plugin manager: entry points one by one, broken plugins reported, uninstall."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from atomr_infer_core import Deployment, infer_runtime
from atomr_infer_core.errors import ConfigError, RuntimeNotInstalledError
from atomr_infer_runtimes import LOAD_PLUGINS_ENV, PluginRegistry, open_cluster

GOOD_PLUGIN = """
import attrs
from atomr_infer_core import RuntimePlugin, hookimpl
from atomr_infer_testkit import MockRunner

@attrs.frozen
class Cfg:
    greeting: str = "hi"

def create(deployment, config, context):
    from atomr_infer_testkit import MockConfig
    return MockRunner(deployment, MockConfig(chunks=(config.greeting,)), context)

@hookimpl
def register_runtimes(register):
    register(RuntimePlugin(name="{runtime}", config_class=Cfg, create=create,
                           model_patterns=("{runtime}-*",), package="atomr-infer-{runtime}"))
"""


class FakeDistribution:
    """A distribution installed into a temporary site directory (dist-info + modules)."""

    def __init__(self, site: Path, name: str, entry_points: dict[str, str]) -> None:
        self.site = site
        self.info = site / f"{name.replace('-', '_')}-0.3.0.dist-info"
        self.info.mkdir()
        (self.info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3.0\n"
        )
        lines = "\n".join(f"{ep} = {target}" for ep, target in entry_points.items())
        (self.info / "entry_points.txt").write_text(f"[atomr_infer]\n{lines}\n")
        importlib.invalidate_caches()

    def module(self, name: str, source: str) -> None:
        (self.site / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()

    def uninstall(self) -> None:
        for path in self.info.iterdir():
            path.unlink()
        self.info.rmdir()
        importlib.invalidate_caches()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("fake_"):
            del sys.modules[name]


def test_broken_entry_point_is_reported_while_the_others_load(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = FakeDistribution(
        site,
        "atomr-infer-fakes",
        {
            "fake_good": "fake_good_mod",
            "fake_broken": "fake_broken_mod",
            "fake_badhook": "fake_badhook_mod",
        },
    )
    dist.module("fake_good_mod", GOOD_PLUGIN.format(runtime="fakegood"))
    dist.module("fake_broken_mod", "raise ImportError('needs libfoo, which is missing')\n")
    dist.module(
        "fake_badhook_mod",
        """
        from atomr_infer_core import hookimpl

        @hookimpl
        def register_runtimes(register):
            raise RuntimeError("cannot find my model files")
        """,
    )
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "fake_good,fake_broken,fake_badhook")
    registry = PluginRegistry()
    registry.load_entry_points()
    try:
        by_name = {info.name: info for info in registry}
        assert set(by_name) == {"fake_good", "fake_broken", "fake_badhook"}
        assert by_name["fake_good"].error is None
        assert by_name["fake_good"].runtimes == ("fakegood",)
        assert by_name["fake_good"].distribution == "atomr-infer-fakes"
        assert by_name["fake_good"].version == "0.3.0"
        assert by_name["fake_broken"].error == "ImportError: needs libfoo, which is missing"
        assert by_name["fake_badhook"].error == "RuntimeError: cannot find my model files"
        assert tuple(by_name["fake_good"]) == (
            "fake_good",
            "0.3.0",
            "atomr-infer-fakes",
            ("fakegood-*",),
            None,
        )
        assert set(registry.runtimes) == {"fakegood"}
        assert infer_runtime("fakegood-large") == "fakegood"
    finally:
        registry.close()
    assert infer_runtime("fakegood-large") is None


def test_empty_env_loads_no_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "")
    registry = PluginRegistry()
    registry.load_entry_points()
    assert registry.infos == []


async def test_testkit_is_found_through_its_real_entry_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the testkit is installed editable in the venv: its entry point is the real one
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "testkit")
    deployment = Deployment(name="chat", model="mock-small")  # runtime inferred: mock-*
    async with open_cluster([deployment]) as cluster:
        [info] = list(cluster.plugins)
        assert (info.name, info.distribution, info.error) == (
            "testkit",
            "atomr-infer-testkit",
            None,
        )
        assert info.runtimes == ("mock",)
        reply = await cluster.complete("chat", prompt="hello")
        assert reply.text == "Hello, world!"
        assert reply.deployment == "chat"


async def test_uninstalled_plugin_removes_its_runtime_cleanly(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = FakeDistribution(site, "atomr-infer-fakert", {"fake_rt": "fake_rt_mod"})
    dist.module("fake_rt_mod", GOOD_PLUGIN.format(runtime="fakert"))
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "fake_rt")
    deployment = Deployment(name="x", model="fakert-1", runtime_config={"greeting": "hey"})
    async with open_cluster([deployment]) as cluster:
        assert (await cluster.complete("x", prompt="?")).text == "hey"
        assert infer_runtime("fakert-1") == "fakert"
    assert infer_runtime("fakert-1") is None

    dist.uninstall()
    explicit = Deployment(name="x", model="fakert-1", runtime="fakert")
    with pytest.raises(RuntimeNotInstalledError) as caught:
        async with open_cluster([explicit]):
            pytest.fail("the cluster must not start")
    assert str(caught.value) == (
        "deployment[0].runtime: runtime 'fakert' is not installed: "
        "run `pip install atomr-infer-fakert`"
    )


async def test_invalid_runtime_config_names_its_path(mock_plugin, mock_deployment) -> None:
    good = mock_deployment("a")
    bad = mock_deployment("b", config={"chunks": ["x"], "chunk_dely": "1s"})
    with pytest.raises(ConfigError) as caught:
        async with open_cluster([good, bad], plugins=[mock_plugin], load_entry_points=False):
            pytest.fail("the cluster must not start")
    assert "deployment[1].runtime_config.chunk_dely" in str(caught.value)


def test_mock_runtime_missing_points_at_the_testkit() -> None:
    registry = PluginRegistry()
    with pytest.raises(RuntimeNotInstalledError) as caught:
        registry.runtime_for(Deployment(name="m", model="x", runtime="mock"), path="deployment[3]")
    assert "pip install atomr-infer-testkit" in str(caught.value)


def test_unknown_name_in_the_env_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "testkit,nosuch")
    registry = PluginRegistry()
    registry.load_entry_points()
    try:
        by_name = {info.name: info for info in registry}
        assert set(by_name) == {"testkit", "nosuch"}
        assert by_name["testkit"].error is None
        error = by_name["nosuch"].error
        assert error is not None
        assert error.startswith("not installed (ATOMR_INFER_LOAD_PLUGINS names it")
        assert "testkit" in error.split("installed: ", 1)[1]
        assert by_name["nosuch"].runtimes == ()
    finally:
        registry.close()


def test_distribution_names_in_the_env_are_not_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "atomr-infer-testkit")
    registry = PluginRegistry()
    registry.load_entry_points()
    try:
        assert [(info.name, info.error) for info in registry] == [("testkit", None)]
    finally:
        registry.close()


@pytest.mark.parametrize(
    ("model", "runtime"),
    [
        ("gpt-4o", "openai"),
        ("gpt-4o-mini", "openai"),
        ("gpt-4.1-nano", "openai"),
        ("gpt-3.5-turbo", "openai"),
        ("gpt-5", "openai"),
        ("gpt-5-mini-2025-08-07", "openai"),
        ("o1-preview", "openai"),
        ("o1", "openai"),
        ("o3-mini", "openai"),
        ("o4-mini", "openai"),
        ("chatgpt-4o-latest", "openai"),
        ("text-embedding-3-small", "openai"),
        ("GPT-4O", "openai"),
        ("claude-3-5-sonnet-20241022", "anthropic"),
        ("anthropic/claude-3-haiku", "anthropic"),
        ("gemini-2.0-flash", "gemini"),
        ("google/gemini-1.5-flash", "gemini"),
        ("litellm/anything", "litellm"),
        ("llama-via-litellm", "litellm"),
        ("gpt-4o-via-litellm", "litellm"),
        ("meta-llama/Llama-3.1-70B-Instruct", None),
        ("o2", None),
    ],
)
def test_the_provider_plugins_declare_the_model_names_they_claim(
    monkeypatch: pytest.MonkeyPatch, model: str, runtime: str | None
) -> None:
    # the installed plugins' own declarations are the whole table (none is built in)
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "openai,anthropic,gemini,litellm")
    registry = PluginRegistry()
    registry.load_entry_points()
    try:
        assert all(info.error is None for info in registry), registry.infos
        assert infer_runtime(model) == runtime
    finally:
        registry.close()
    assert infer_runtime(model) is None
