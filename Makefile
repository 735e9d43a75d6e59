.DEFAULT_GOAL := help
PYTHON ?= python

.PHONY: help
help: ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

.PHONY: install
install: ## install the package in editable mode with the test and lint extras
	$(PYTHON) -m pip install -e '.[test,lint]'

.PHONY: dev
dev: ## build the Rust core in debug mode into the current environment
	MATURIN_PEP517_ARGS='--profile dev' $(PYTHON) -m pip install -e '.[test]'

.PHONY: build-prod
build-prod: ## build the Rust core with the release profile into the current environment
	$(PYTHON) -m pip install -e '.[test]'

.PHONY: fmt
fmt: ## format Python and Rust code
	$(PYTHON) -m ruff check --fix python tests benches
	$(PYTHON) -m ruff format python tests benches
	cargo fmt

.PHONY: lint-python
lint-python: ## ruff, ruff format check, mypy and the stub check
	$(PYTHON) -m ruff check python tests benches
	$(PYTHON) -m ruff format --check python tests benches
	$(PYTHON) -m mypy
	$(PYTHON) -m mypy.stubtest ccop._core

.PHONY: lint-rust
lint-rust: ## rustfmt check and clippy with warnings as errors
	cargo fmt --check
	cargo clippy --all-targets --all-features -- -D warnings

.PHONY: lint
lint: lint-python lint-rust ## all linters

.PHONY: test
test: ## Rust unit tests, then the Python suite
	cargo test
	$(PYTHON) -m pytest

.PHONY: bench
bench: build-prod ## micro benchmarks of the Rust hot path against pure Python
	$(PYTHON) -m pytest benches --benchmark-enable

.PHONY: clean
clean: ## remove build output
	cargo clean
	rm -rf .pytest_cache .mypy_cache .ruff_cache .benchmarks
