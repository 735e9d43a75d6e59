"""The `ccop` command line, run as a real process: flags, environment, config file, precedence, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ccop
from conftest import printed_config, run_ccop

FLAGS = [
    "--config",
    "--init",
    "--force",
    "--port",
    "--host",
    "--ollama-url",
    "--model-map",
    "--default-model",
    "--strict-thinking",
    "--verbose",
    "--workers",
    "--token-counting",
    "--print-config",
    "--version",
    "-c",
    "-p",
    "-u",
    "-m",
    "-d",
    "-v",
]


def test_help_lists_every_flag(tmp_path: Path) -> None:
    result = run_ccop("--help", cwd=tmp_path)
    assert result.returncode == 0
    for flag in FLAGS:
        assert flag in result.stdout, flag


def test_version_matches_package(tmp_path: Path) -> None:
    result = run_ccop("--version", cwd=tmp_path)
    assert result.stdout.strip() == f"ccop {ccop.__version__}"


def test_both_console_scripts_exist() -> None:
    import shutil

    if shutil.which("ccop") is None:
        pytest.skip("console scripts are not on PATH in this environment")
    assert shutil.which("claude-code-ollama-proxy") is not None


def test_defaults(tmp_path: Path) -> None:
    settings = printed_config(cwd=tmp_path)
    assert settings["port"] == 3000
    assert settings["host"] == "127.0.0.1"
    assert settings["ollamaUrl"] == "http://localhost:11434"
    assert settings["defaultModel"] == "llama3.1"
    assert settings["workers"] == 1
    assert settings["strictThinking"] is False
    assert settings["tokenCounting"] == "calibrated"


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    (tmp_path / "proxy.config.json").write_text(
        json.dumps({"port": 4001, "defaultModel": "from-file", "host": "127.0.0.2", "workers": 3})
    )
    env = {"PORT": "4002", "DEFAULT_MODEL": "from-env"}
    settings = printed_config("--port", "4003", cwd=tmp_path, env=env)
    assert settings["port"] == 4003  # flag beats env and file
    assert settings["defaultModel"] == "from-env"  # env beats file
    assert settings["host"] == "127.0.0.2"  # file beats default
    assert settings["workers"] == 3
    assert settings["ollamaUrl"] == "http://localhost:11434"  # default


def test_every_env_var_is_read(tmp_path: Path) -> None:
    env = {
        "PORT": "4100",
        "HOST": "0.0.0.0",
        "OLLAMA_URL": "http://gpu-box:11434/",
        "DEFAULT_MODEL": "qwen3-coder:30b",
        "CCOP_MODEL_MAP": "claude-a=m1, claude-b=m2",
        "CCOP_STRICT_THINKING": "true",
        "CCOP_VERBOSE": "1",
        "CCOP_WORKERS": "4",
        "CCOP_TOKEN_COUNTING": "heuristic",
    }
    settings = printed_config(cwd=tmp_path, env=env)
    assert settings["port"] == 4100
    assert settings["host"] == "0.0.0.0"
    assert settings["ollamaUrl"] == "http://gpu-box:11434"
    assert settings["defaultModel"] == "qwen3-coder:30b"
    assert settings["modelMap"] == {"claude-a": "m1", "claude-b": "m2"}
    assert settings["strictThinking"] is True
    assert settings["verbose"] is True
    assert settings["workers"] == 4
    assert settings["tokenCounting"] == "heuristic"


def test_flag_can_switch_off_an_env_boolean(tmp_path: Path) -> None:
    settings = printed_config("--no-strict-thinking", cwd=tmp_path, env={"CCOP_STRICT_THINKING": "true"})
    assert settings["strictThinking"] is False


def test_model_maps_merge_across_layers(tmp_path: Path) -> None:
    (tmp_path / "proxy.config.json").write_text(json.dumps({"modelMap": {"a": "file-a", "b": "file-b"}}))
    settings = printed_config(
        "-m", "b=flag-b", "--model-map", "c=flag-c", cwd=tmp_path, env={"CCOP_MODEL_MAP": "a=env-a"}
    )
    assert settings["modelMap"] == {"a": "env-a", "b": "flag-b", "c": "flag-c"}


def test_explicit_config_path_and_env_config(tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.json"
    config.write_text(json.dumps({"defaultModel": "explicit"}))
    assert printed_config("-c", str(config), cwd=tmp_path)["defaultModel"] == "explicit"
    assert printed_config(cwd=tmp_path, env={"CCOP_CONFIG": str(config)})["defaultModel"] == "explicit"


def test_init_writes_a_usable_config_and_refuses_to_overwrite(tmp_path: Path) -> None:
    result = run_ccop("--init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "proxy.config.json").read_text())
    assert written["defaultModel"] == "llama3.1"
    assert isinstance(written["modelMap"], dict) and written["modelMap"]
    # The written file must load without errors.
    settings = printed_config(cwd=tmp_path)
    assert settings["modelMap"] == written["modelMap"]

    (tmp_path / "proxy.config.json").write_text('{"port": 1234}')
    again = run_ccop("--init", cwd=tmp_path)
    assert again.returncode != 0
    assert "already exists" in again.stderr
    assert json.loads((tmp_path / "proxy.config.json").read_text()) == {"port": 1234}

    forced = run_ccop("--init", "--force", cwd=tmp_path)
    assert forced.returncode == 0
    assert json.loads((tmp_path / "proxy.config.json").read_text())["defaultModel"] == "llama3.1"


@pytest.mark.parametrize(
    ("args", "env", "config", "expected"),
    [
        (["--port", "70000"], {}, None, "between 1 and 65535"),
        (["--port", "abc"], {}, None, "whole number"),
        (["-m", "no-equals-sign"], {}, None, "CLAUDE_MODEL=OLLAMA_MODEL"),
        (["-m", "=x"], {}, None, "CLAUDE_MODEL=OLLAMA_MODEL"),
        (["--workers", "0"], {}, None, "at least 1"),
        ([], {"PORT": "0"}, None, "PORT"),
        ([], {"OLLAMA_URL": "ftp://localhost:11434"}, None, "OLLAMA_URL"),
        ([], {"OLLAMA_HOST": "localhost:99999"}, None, "OLLAMA_HOST"),
        ([], {}, '{"version": "2"}', "'version' must be '1'"),
        ([], {}, "{not json", "not valid JSON"),
        ([], {}, '{"port": "3000"}', "'port'"),
        ([], {}, '{"prot": 3000}', "unknown key 'prot'"),
        ([], {}, "[1, 2]", "JSON object"),
        (["-c", "missing.json"], {}, None, "cannot read config file"),
    ],
)
def test_bad_values_exit_with_one_line_error(
    tmp_path: Path, args: list[str], env: dict[str, str], config: str | None, expected: str
) -> None:
    if config is not None:
        (tmp_path / "proxy.config.json").write_text(config)
    result = run_ccop(*args, "--print-config", cwd=tmp_path, env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert lines[0].startswith("ccop: ")


def test_every_setting_has_a_flag_an_env_var_and_a_documented_row(tmp_path: Path) -> None:
    # The option table is the one declaration of a setting: the flag, its help and the docs row all follow from it.
    from ccop.settings import OPTIONS

    help_text = " ".join(run_ccop("--help", cwd=tmp_path).stdout.split())
    docs = (Path(__file__).parent.parent / "docs" / "CLI.md").read_text()
    rows = {line.split("|")[3].strip(): line for line in docs.splitlines() if line.startswith("| `-")}
    for option in OPTIONS:
        assert option.long_flag in help_text, option.name
        assert f"env {option.env}" in help_text, option.name
        row = rows.get(f"`{option.config_key}`") or rows.get(f"`{option.config_key}` (list)")
        assert row is not None, f"docs/CLI.md has no flag row for {option.config_key}"
        assert option.long_flag.removeprefix("--") in row and f"`{option.env}" in row, row


def test_a_settings_flag_is_checked_by_its_own_rule(tmp_path: Path) -> None:
    assert printed_config("--ping-interval", "0.5", cwd=tmp_path)["pingInterval"] == 0.5
    assert printed_config("--model-num-ctx", "qwen3:8b=8192", cwd=tmp_path)["modelNumCtx"] == {"qwen3:8b": 8192}
    assert printed_config("--cors-origin", "http://a", "--cors-origin", "*", cwd=tmp_path)["corsOrigins"] == [
        "http://a",
        "*",
    ]
    for args, expected in [
        (["--idle-timeout", "nan"], "--idle-timeout: expected a positive number"),
        (["--num-ctx", "-1"], "--num-ctx: must be at least 0"),
        (["--model-num-ctx", "qwen3"], "--model-num-ctx: expected MODEL=TOKENS"),
        (["--token-counting", "exact"], "--token-counting: invalid choice"),
        (["-u", "ftp://x"], "--ollama-url: expected an Ollama address"),
    ]:
        result = run_ccop(*args, "--print-config", cwd=tmp_path)
        assert result.returncode == 2, args
        assert result.stderr.startswith("ccop: ") and expected in result.stderr, result.stderr
