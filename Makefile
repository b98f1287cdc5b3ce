# `make serve`: install, build the demo model if missing, serve it (and the built-in MiniLM embeddings) on 127.0.0.1:8000.
# `make test`:  install with test extras, run the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
# The admin API key of the local server (any string of 20+ characters; stored hashed).
SHIPYARD_ADMIN_KEY ?= sy-local-admin-change-me-0000
export SHIPYARD_ADMIN_KEY
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: serve test install install-test demo-model bench clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamps re-run pip only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

# llama-cpp-python is a source build: its wheel is built once into ~/.cache, keyed by version.
$(VENV)/.installed-llamacpp: scripts/llama-cpp.sh | $(BIN)/python
	scripts/llama-cpp.sh $(BIN)
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test $(VENV)/.installed-llamacpp

demo-model: install
	$(BIN)/shipyard model build-demo

# The demo is served as `shipyard deploy` chooses: every way of serving it that fits here,
# measured (cached per machine and model), the best for throughput within 2% perplexity loss.
# llama.cpp's candidates join when its wheel is already built (make test builds it once).
SERVE_CONFIG ?= $(HOME)/.cache/shipyard/serve/shipyard-demo.yaml
serve: demo-model
	@if ls $(HOME)/.cache/shipyard/wheels/llama-cpp-python-*/*.whl >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory $(VENV)/.installed-llamacpp; fi
	@mkdir -p $(dir $(SERVE_CONFIG))
	$(BIN)/shipyard deploy "$$($(BIN)/shipyard model path)" --name shipyard-demo --config $(SERVE_CONFIG) \
	  --objective throughput --no-serve
	@echo "API key for this server (set SHIPYARD_ADMIN_KEY to choose your own): $$SHIPYARD_ADMIN_KEY"
	$(BIN)/shipyard serve --config $(SERVE_CONFIG) --host $(HOST) --port $(PORT) --embedding-model builtin

# Tests start their own Redis and PostgreSQL servers, drive Chromium (the dashboard's pages) and
# validate KEDA manifests with node (scripts/keda-schema.sh); install them from Debian when missing.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc libc6-dev"; \
	{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# pytest exits 5 when it collects nothing: that is "no tests", not a failure.
test: install-test system-deps
	scripts/keda-schema.sh >/dev/null
	$(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

bench: install-test demo-model system-deps
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/hardening.py
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/replicas.py
	$(BIN)/python bench/optimization.py
	$(BIN)/python bench/caching.py
	$(BIN)/python bench/structured.py
	$(BIN)/python bench/monitoring.py
	$(BIN)/python bench/scaling.py
	$(BIN)/python bench/scaling_runtime.py
	$(BIN)/python bench/experiments.py --shadow
	$(BIN)/python bench/redesign.py

clean:
	rm -rf $(VENV) .pytest_cache
