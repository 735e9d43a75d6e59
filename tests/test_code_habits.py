"""The code's own housekeeping: nothing is computed that nobody reads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ccop.translate import ChatPlan


def test_chat_plan_carries_only_what_the_endpoint_reads() -> None:
    # Every field of the plan is read by messages.py; a field written and never read is dead weight to keep true.
    fields = {field.name for field in dataclasses.fields(ChatPlan)}
    assert fields == {"body", "ollama_model", "max_tokens", "stop_sequences", "stream", "notes", "offered_tools"}


ROOT = Path(__file__).parent.parent


def test_pytest_keeps_its_cache_so_last_failed_works() -> None:
    # `pytest --lf` needs the cache plugin; the cache directory stays out of git instead.
    addopts = next(line for line in (ROOT / "pyproject.toml").read_text().splitlines() if line.startswith("addopts"))
    assert "no:cacheprovider" not in addopts
    assert ".pytest_cache/" in (ROOT / ".gitignore").read_text().splitlines()


def test_pre_commit_runs_the_makefiles_lint_targets() -> None:
    config = (ROOT / ".pre-commit-config.yaml").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("lint-python", "lint-rust"):
        assert f"entry: make {target}" in config
        assert f"\n{target}:" in makefile
    assert "language: system" in config


def test_architecture_lists_every_module_of_the_package_once() -> None:
    # docs/ARCHITECTURE.md gives every module its one job; a module renamed or removed must take its row along.
    table = (ROOT / "docs" / "ARCHITECTURE.md").read_text().split("## Python package", 1)[1].split("\n## ", 1)[0]
    documented = [line.split("`")[1] for line in table.splitlines() if line.startswith("| `")]
    modules = sorted(path.name for path in (ROOT / "python" / "ccop").glob("*.py") if path.name != "__main__.py")
    assert sorted(documented) == modules
    # Three modules were once models.py, model_list.py and catalog.py: names that did not tell them apart.
    assert {"model_names.py", "models_endpoint.py", "model_facts.py"} <= set(documented)


def _code_lines(text: str) -> int:
    """Lines with code on them: not blank, not only a comment (`//`, `///`, `//!`)."""
    return sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("//"))


def test_rust_core_stays_small() -> None:
    # The Rust core does the per-chunk work and nothing else (issue 18): at most 3,000 lines of code outside its
    # tests (about 4,200 before the HTTP client, two token counters and two chunk parsers went), no file over 700.
    total = 0
    for path in sorted((ROOT / "rust").rglob("*.rs")):
        if path.name == "tests.rs":
            continue
        text = path.read_text()
        assert len(text.splitlines()) <= 700, f"{path.relative_to(ROOT)} has grown past 700 lines: split it"
        total += _code_lines(text.split("#[cfg(test)]", 1)[0])
    assert total <= 3000, f"the Rust core has {total} lines of code outside its tests"
