# Each target creates the venv it needs; nothing has to be installed by hand.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"

demo: install
	$(BIN)/graphdsl demo

# pytest exits 5 when it collects nothing; that is a failure here too.
test: install
	$(BIN)/python -m pytest -q -rs tests

bench: install
	$(BIN)/python benchmarks/run.py --quick

clean:
	rm -rf build $(VENV)
