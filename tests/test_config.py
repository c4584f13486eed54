"""The fleet file: valid files load; invalid ones name the file, the field and the problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.config import ConfigError, load_config, parse_config
from modelyard.config.defaults import default_fleet

ROOT = Path(__file__).resolve().parent.parent


def test_default_fleet_is_valid() -> None:
    fleet = default_fleet()
    assert [m.name for m in fleet.models] == ["smollm2-135m", "qwen2.5-0.5b", "minilm-l6", "minilm-l2-int8"]
    assert fleet.alias("auto") is not None and fleet.alias("auto").targets == ("smollm2-135m", "qwen2.5-0.5b")  # type: ignore[union-attr]
    assert fleet.server.port == 8000 and fleet.server.host == "127.0.0.1"


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")))
def test_examples_load(example: Path) -> None:
    assert load_config(example).models


def minimal(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {"models": {"m": {"kind": "chat", "deployments": [{"backend": "openai", "base_url": "http://x"}]}}}
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    ("data", "path", "problem"),
    [
        ({}, "models", "non-empty mapping"),
        ({"models": {"m": {"kind": "vision", "deployments": [{"backend": "openai"}]}}}, "models.m.kind", "expected one of"),
        ({"models": {"m": {"deployments": []}}}, "models.m.deployments", "non-empty list"),
        ({"models": {"m": {"deployments": [{"backend": "openai", "max_concurrency": "two"}]}}}, "models.m.deployments[0].max_concurrency", "integer >= 1"),
        ({"models": {"m": {"deployments": [{"name": "a", "backend": "x"}, {"name": "a", "backend": "x"}]}}}, "models.m.deployments", "unique"),
        ({"models": {"m": {"deployments": [{"backend": "openai", "price": {"input_per_1m": -1}}]}}}, "price.input_per_1m", ">= 0"),
        ({"models": {"m": {"deployments": [{"backend": "openai"}], "colour": "red"}}}, "models.m.colour", "unknown field"),
        (minimal(aliases={"a": {"targets": ["nope"]}}), "aliases.a.targets[0]", "unknown model"),
        (minimal(aliases={"m": {"targets": ["m"]}}), "aliases.m", "same name as a model"),
        (minimal(server={"port": "http"}), "server.port", "integer"),
        (minimal(server={"access_log_flush_s": -1}), "server.access_log_flush_s", ">= 0"),
        (minimal(extra=1), "extra", "unknown field"),
        ({"models": {"m": {"deployments": [{"backend": "openai", "classes": ["fast"]}]}}}, "models.m.deployments[0].classes[0]", "unknown workload class"),
        ({"models": {"m": {"deployments": [{"backend": "openai", "classes": "batch"}]}}}, "models.m.deployments[0].classes", "list of names"),
        ({"models": {"m": {"deployments": [{"backend": "openai", "upstream_streaming": "never"}]}}}, "models.m.deployments[0].upstream_streaming",
         "expected one of always, when_client_streams"),
    ],
)
def test_invalid_config_names_field(data: dict[str, object], path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="fleet.yaml")
    message = str(info.value)
    assert message.startswith("fleet.yaml: ")
    assert path in message and problem in message


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.yaml"
    bad.write_text("models:\n  m: [unclosed\n")
    with pytest.raises(ConfigError, match=r"fleet.yaml: invalid YAML: line \d+"):
        load_config(bad)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "absent.yaml")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelyard.cli", *args], capture_output=True, text=True, timeout=60)


def test_check_reports_backend_option_errors(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.yaml"
    bad.write_text("models:\n  m:\n    deployments:\n      - backend: llamacpp\n        model_file: x.gguf\n        workers: many\n")
    result = run_cli("check", "--config", str(bad))
    assert result.returncode == 2
    assert "models.m.deployments[0].workers: expected an integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_reports_unknown_backend(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.yaml"
    bad.write_text("models:\n  m:\n    deployments:\n      - backend: tensorflow\n")
    result = run_cli("check", "--config", str(bad))
    assert result.returncode == 2 and "unknown backend 'tensorflow'" in result.stderr


def test_check_accepts_example() -> None:
    result = run_cli("check", "--config", str(ROOT / "examples" / "local.yaml"))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_serve_refuses_bad_config_cleanly(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.yaml"
    bad.write_text("models: 3\n")
    result = run_cli("serve", "--config", str(bad), "--port", "1")
    assert result.returncode == 2
    assert "fleet.yaml: models: expected a non-empty mapping" in result.stderr


def test_default_fleet_context_windows_fit_their_engines_caches(caplog: pytest.LogCaptureFixture) -> None:
    from modelyard.backends.base import BackendContext
    from modelyard.backends.llamacpp_server import SPARE_SLOTS, LlamaServerBackend

    fleet = default_fleet()
    for model in fleet.models:
        for deployment in model.deployments:
            if deployment.backend == "llamacpp_server":
                options = deployment.options
                assert model.context_window <= (options["parallel"] + SPARE_SLOTS) * options["n_ctx"], model.name
    oversized = parse_config({"models": {"m": {"kind": "chat", "context_window": 32768, "deployments": [
        {"backend": "llamacpp_server", "model_file": "builtin:smollm2-135m", "parallel": 2, "n_ctx": 1024}]}}})
    with caplog.at_level("WARNING", logger="modelyard.backends"):
        LlamaServerBackend(oversized.models[0].deployments[0], oversized.models[0], BackendContext(models_dir=Path("/nonexistent")))
    assert "larger than" in caplog.text and "3072 tokens" in caplog.text
