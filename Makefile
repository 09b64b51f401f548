# The two commands: `make up` runs the product, `make test` runs the suite.
# Both set up everything first (system packages when root on Debian, venv, UI assets).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: up test setup setup-test lint bench clean web-assets

up: setup
	$(BIN)/heatreplay up $(ARGS)

test: setup-test
	cd web && npm test --silent
	$(BIN)/pytest $(PYTEST_ARGS)

# system packages first: they include npm, which web-assets runs
setup:
	@bash scripts/setup_system.sh
	@$(MAKE) --no-print-directory $(STAMP) web-assets

setup-test:
	@bash scripts/setup_system.sh --test
	@$(MAKE) --no-print-directory $(STAMP) web-assets

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

web-assets: web/vendor/.done

web/vendor/.done: web/package.json web/package-lock.json web/vendor.sh
	cd web && npm ci --no-audit --no-fund --loglevel=error && sh vendor.sh
	@touch $@

lint: $(STAMP)
	$(BIN)/ruff check app replay tests bench
	$(BIN)/ruff format --check app replay tests bench
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) web/node_modules web/vendor .run test-output
