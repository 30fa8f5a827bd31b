# Two commands for a fresh machine: `make repro` and `make test`. Both create .venv when missing.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install repro test bench clean-venv

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev,pyfeat]"
	# py-feat's xgboost brings nvidia-nccl-cu12, whose libnccl.so.2 overwrites (same path) the one a CUDA-13
	# torch gets from nvidia-nccl-cu13: put torch's back (see pyproject.toml)
	if $(BIN)/python -m pip show -q nvidia-nccl-cu13 >/dev/null 2>&1; then \
		$(BIN)/python -m pip install --quiet --force-reinstall --no-deps -c requirements.lock nvidia-nccl-cu13; fi
	touch $(STAMP)

install: $(STAMP)

repro: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" dvc repro

test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

bench: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m benchmarks.frame_store
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m benchmarks.stylegan2_forward
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m benchmarks.evaluation

clean-venv:
	rm -rf $(VENV)
