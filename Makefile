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
	@echo "serve them: the BentoML service (either line), then the Gradio demo:"
	@echo "  SSLFORGE_MODEL=runs/quickstart SSLFORGE_INDEX=runs/quickstart-retrieval/index $(BIN)/bentoml serve --port 3000"
	@echo "  $(BIN)/sslforge serve --model runs/quickstart --index runs/quickstart-retrieval/index --backend onnx --port 3000"
	@echo "  $(BIN)/sslforge demo --model runs/quickstart --index runs/quickstart-retrieval/index --port 7860"

test: $(STAMP)
	$(BIN)/python -m pytest -q

install: $(STAMP)

# Reinstall whenever the dependencies or their pins change.
# torch 2.14.1 brings its CUDA libraries: the venv takes about 6 GB, so check the disk before a half-done install.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || { free_kb=$$(df -Pk . | awk 'NR==2 {print $$4}'); [ "$$free_kb" -ge 8000000 ] || { \
		echo "error: a fresh sslforge install needs about 8 GB free disk here, $$((free_kb / 1024)) MB left; free some space and rerun make" >&2; exit 1; }; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-cache-dir -c constraints.txt -e '.[dev,docs,export,retrieval,database,benchmark,serve,demo]'
	@# the demo's browser test drives Debian's Chromium (never a browser download): install it when missing
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } || { \
		echo "error: /usr/bin/chromium is missing: run 'apt-get install -y chromium chromium-driver' as root" >&2; exit 1; }
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
