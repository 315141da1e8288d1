"""Every distribution builds, passes ``twine check`` and installs as a user would install it.

The wheels and sdists are built once per module (scripts/build_dists.py, which also runs
``twine check --strict``) into a temporary wheelhouse; ``atomr-infer-openai`` is then installed
from it into a fresh virtual environment, its third-party dependencies resolved from the index
at the locked versions (constraints.txt). The core must come from the wheelhouse, never from
the index (``atomr-infer`` on PyPI is the Rust original's bindings).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import venv
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from atomr_infer_core import DISTRIBUTION, __version__

REPO = Path(__file__).resolve().parents[2]
PROJECTS = [REPO, *sorted(p.parent for p in (REPO / "plugins").glob("*/pyproject.toml"))]
HEAVY = {"torch", "onnxruntime", "onnxruntime-gpu", "transformers"}
COMPATIBLE = re.compile(r"^(atomr-infer-[a-z]+)>=(\d+)\.(\d+),<(\d+)\.(\d+)$")


def _pyproject(project: Path) -> dict:
    return tomllib.loads((project / "pyproject.toml").read_text())["project"]


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=900, check=False, **kwargs)  # type: ignore[call-overload]


# ------------------------------------------------------------------ declared metadata (fast)


def test_every_distribution_shares_one_version_and_pins_the_core_compatibly() -> None:
    major, minor = (int(x) for x in __version__.split(".")[:2])
    names = set()
    for project in PROJECTS:
        meta = _pyproject(project)
        names.add(meta["name"])
        assert meta["version"] == __version__, project
        extras = meta.get("optional-dependencies", {}).values()
        for dep in [*meta.get("dependencies", []), *(d for group in extras for d in group)]:
            m = COMPATIBLE.match(dep)
            if dep.startswith("atomr-infer"):
                assert m, f"{meta['name']}: {dep!r} is not a >=X.Y,<X.(Y+1) range"
                assert (int(m[2]), int(m[3]), int(m[4]), int(m[5])) == (
                    major,
                    minor,
                    major,
                    minor + 1,
                ), dep
    assert _pyproject(REPO)["name"] == DISTRIBUTION == "atomr-infer-trio"
    assert "atomr-infer" not in names


def test_every_distribution_declares_readme_license_urls_classifiers_and_python() -> None:
    license_text = (REPO / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0" in license_text
    for project in PROJECTS:
        meta = _pyproject(project)
        assert (project / meta["readme"]).is_file(), project
        assert meta["license"] == "Apache-2.0" and meta["license-files"] == ["LICENSE"]
        assert (project / "LICENSE").read_text() == license_text, f"{project}/LICENSE differs"
        assert meta["requires-python"] == ">=3.11"
        assert meta["urls"] and "Typing :: Typed" in meta["classifiers"]
        for package in project.glob("atomr_infer*/__init__.py"):
            assert (package.parent / "py.typed").is_file(), package.parent


def test_range_bounds_where_we_rely_on_internals() -> None:
    core = _pyproject(REPO)["dependencies"]
    assert any(re.match(r"^httpcore>=1\.0,<1\.1$", d) for d in core), core
    assert any(re.match(r"^hypercorn\[trio\]>=0\.18,<0\.19$", d) for d in core), core
    for plugin in ("torch", "onnx"):
        deps = _pyproject(REPO / "plugins" / f"atomr-infer-{plugin}")["dependencies"]
        assert any(re.match(r"^transformers>=[\d.]+,<\d+", d) for d in deps), deps


def test_the_lock_pins_every_installed_third_party_distribution() -> None:
    import importlib.metadata as md

    pinned = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pinned[re.sub(r"[-_.]+", "-", name).lower()] = version
    for dist in md.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if name.startswith("atomr-infer"):
            continue
        assert name in pinned, f"{name} is installed but not in constraints.txt (run make upgrade)"
        assert dist.version.split("+")[0] == pinned[name], (name, dist.version, pinned[name])


# ------------------------------------------------------------------ built and installed (slow)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheelhouse")
    result = _run([sys.executable, str(REPO / "scripts" / "build_dists.py"), str(out)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2 * len(PROJECTS), result.stdout
    return out


@pytest.mark.slow
def test_every_wheel_carries_license_readme_and_py_typed(wheelhouse: Path) -> None:
    wheels = sorted(wheelhouse.glob("*.whl"))
    assert len(wheels) == len(PROJECTS) and len(list(wheelhouse.glob("*.tar.gz"))) == len(PROJECTS)
    for wheel in wheels:
        names = zipfile.ZipFile(wheel).namelist()
        metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA")))
        text = metadata.decode()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), wheel.name
        assert any(n.endswith("/py.typed") for n in names), wheel.name
        assert "License-Expression: Apache-2.0" in text, wheel.name
        assert "Description-Content-Type: text/markdown" in text, wheel.name
        assert "Requires-Python: >=3.11" in text and "Project-URL: " in text, wheel.name


SERVE = """
[cluster]
bind = "127.0.0.1:0"

[[deployment]]
name = "chat"
model = "gpt-4o-mini"
[deployment.runtime_config]
base_url = "{url}/v1"
api_key = "sk-wheel-test"
"""


@pytest.fixture(scope="module")
def openai_venv(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    report = env_dir / "report.json"
    install = _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "--find-links",
            str(wheelhouse),
            "-c",
            str(REPO / "constraints.txt"),
            "--report",
            str(report),
            "atomr-infer-openai",
        ]
    )
    assert install.returncode == 0, install.stdout + install.stderr
    installed = {
        item["metadata"]["name"].lower(): item["download_info"]["url"]
        for item in json.loads(report.read_text())["install"]
    }
    for ours in ("atomr-infer-trio", "atomr-infer-openai"):
        assert installed[ours].startswith("file://"), (ours, installed[ours])
        assert Path(installed[ours].removeprefix("file://")).parent == wheelhouse
    assert "atomr-infer" not in installed
    assert not HEAVY & set(installed), sorted(HEAVY & set(installed))
    return python


def _cli(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMR_", "PYTHON"))}
    return _run([str(python), "-m", "atomr_infer", *args], env=env, cwd=python.parents[1])


@pytest.mark.slow
def test_installed_openai_plugin_reports_versions_and_plugins(openai_venv: Path) -> None:
    version = _cli(openai_venv, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith(f"atomr-infer-trio {__version__} (Python ")
    assert f"  atomr-infer-openai {__version__} (plugin: openai)" in version.stdout
    plugins = _cli(openai_venv, "plugins")
    assert plugins.returncode == 0 and re.search(
        r"^openai\s+" + re.escape(__version__), plugins.stdout, re.M
    )


@pytest.mark.slow
def test_demo_without_the_testkit_names_the_pip_line(openai_venv: Path) -> None:
    demo = _cli(openai_venv, "demo")
    assert demo.returncode == 1
    assert "pip install atomr-infer-testkit" in demo.stderr
    assert "pip install atomr-infer-openai" not in demo.stderr
    assert "Traceback" not in demo.stderr + demo.stdout


@pytest.mark.slow
async def test_installed_gateway_answers_over_the_testkit_mock(
    openai_venv: Path, tmp_path: Path, read_banner: Callable[[trio.Process], Awaitable[str]]
) -> None:
    import httpx

    from atomr_infer_testkit import mock_openai

    async with mock_openai() as server:
        config = tmp_path / "atomr.toml"
        config.write_text(SERVE.format(url=server.url))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMR_", "PYTHON"))}
        proc = await trio.lowlevel.open_process(
            [str(openai_venv), "-m", "atomr_infer", "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
            env=env,
        )
        try:
            with trio.fail_after(120):
                url = await read_banner(proc)
                async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                    response = await http.post(
                        "/v1/chat/completions",
                        json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
                    )
                proc.terminate()
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    assert server.requests[-1].json["model"] == "gpt-4o-mini"
    assert code == 0
