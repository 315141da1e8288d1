# The two commands of the README: `make serve` and `make test`. Both set everything up first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stamp-installed
PYTEST_ARGS ?=

.PHONY: setup serve test test-fast lint bench
setup: $(STAMP)

$(STAMP): scripts/setup.sh pyproject.toml $(wildcard plugins/*/pyproject.toml plugins/*/.install-extras)
	bash scripts/setup.sh
	touch $@

serve: $(STAMP)
	$(PY) -m atomr_infer serve $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false \
	  $(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
