# `make run`: install (once) and run the quick-start pipeline. `make test`: install (once) and run the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sslforge-installed

.PHONY: run test install clean

run: $(STAMP)
	$(BIN)/sslforge quickstart
	$(BIN)/sslforge export onnx runs/quickstart
	$(BIN)/sslforge embed --model runs/quickstart --images "$$($(BIN)/sslforge sample)/test" --out emb/quickstart \
		--backend onnx
	$(BIN)/sslforge index quickstart --run runs/quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

install: $(STAMP)

# Reinstall whenever the dependencies or their pins change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,export,retrieval]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
