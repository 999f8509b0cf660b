# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1
APT_PACKAGES := espeak-ng ffmpeg redis-server chromium
SOURCES := $(shell find bambid web twisted etc -type f -not -name '*.pyc' 2>/dev/null) setup.cfg pyproject.toml

.PHONY: run test lint typecheck pytest apt-deps bench bench-ws bench-chat bench-ai bench-voice bench-triggers bench-compression clean

# --- environment ---------------------------------------------------------------

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "bambid needs Python 3.11 or newer"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Editable install with test extras; the repository root goes on sys.path too so
# that Twisted finds twisted/plugins/bambid_plugin.py (editable installs do not
# expose plugin directories).
$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/python -c 'import site, sys; open(site.getsitepackages()[0] + "/bambid-repo.pth", "w").write(sys.argv[1] + "\n")' "$(CURDIR)"
	$(BIN)/python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
	$(BIN)/bambidctl --help >/dev/null  # the console script (setup.cfg entry_points)
	touch $@

# --- make run ------------------------------------------------------------------

run: $(VENV)/.installed
	mkdir -p var
	$(BIN)/twist bambid $(if $(CONFIG),--config $(CONFIG))

# --- make test -----------------------------------------------------------------

apt-deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing system packages; run:  sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

pytest: $(VENV)/.installed
	$(BIN)/pytest $(PYTEST_ARGS)

test: apt-deps $(VENV)/.installed
	$(MAKE) --no-print-directory lint typecheck pytest

# Benchmarks (docs/benchmarks.md records their results and arguments).
bench: $(VENV)/.installed
	$(BIN)/python -m bench.storage_bench

bench-ws: $(VENV)/.installed
	$(BIN)/python -m bench.ws_bench

bench-chat: $(VENV)/.installed
	$(BIN)/python -m bench.chat_fanout

bench-ai: $(VENV)/.installed
	$(BIN)/python -m bench.ai_overhead

bench-voice: $(VENV)/.installed
	$(BIN)/python -m bench.voice_latency

bench-triggers: $(VENV)/.installed
	$(BIN)/python -m bench.trigger_scan

bench-compression: $(VENV)/.installed
	$(BIN)/python -m bench.compression

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
