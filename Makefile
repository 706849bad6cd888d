# The two commands of the README. Both install what they need into .venv first (once).
VENV ?= .venv
BIN := $(VENV)/bin
# The shared assets beside the project, when they are there; otherwise set FACEKIT_ASSETS or run
# `facekit assets fetch`.
ifeq ($(FACEKIT_ASSETS),)
  ifneq ($(wildcard ../shared/assets),)
    export FACEKIT_ASSETS := $(abspath ../shared/assets)
  endif
endif
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1

.PHONY: sample test install

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

sample: $(VENV)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro dvc.yaml

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest
