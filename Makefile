# Two commands set everything up from nothing:
#   make search   build an index over sample photos and run composed searches (MODEL=... to choose)
#   make test     the whole test suite, with the vLLM and browser groups (installs what they need)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MODEL  ?=
STAMP  := $(VENV)/.cir-installed

.PHONY: search test test-fast test-gpu lint format setup clean

# The environment: a virtual env with cir installed in editable mode plus test and example extras.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,examples]"
	@touch $(STAMP)

setup: $(STAMP)

search: $(STAMP)
	$(BIN)/python examples/quickstart.py $(if $(MODEL),--model "$(MODEL)")

test: $(STAMP)
	bash scripts/setup_browser.sh
	$(BIN)/python -m pytest --run-browser
	bash scripts/setup_vllm_env.sh
	.venv-vllm/bin/python -m pytest tests/vllm --run-vllm -p no:cacheprovider

test-fast: $(STAMP)
	$(BIN)/python -m pytest

test-gpu: $(STAMP)
	$(BIN)/python -m pytest --run-gpu tests/gpu

lint: $(STAMP)
	$(BIN)/ruff check cir tests benchmarks examples demos
	$(BIN)/ruff format --check cir tests benchmarks examples demos

format: $(STAMP)
	$(BIN)/ruff format cir tests benchmarks examples demos
	$(BIN)/ruff check --fix cir tests benchmarks examples demos

clean:
	rm -rf $(VENV) .venv-vllm build dist *.egg-info
