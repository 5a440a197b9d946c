# One command each: set up, test, run. See README.md.
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
export IPYTHONDIR := $(CURDIR)/.ipython

.PHONY: setup test test-fast run notebooks clean

setup:  ## fresh machine -> .venv with the package, test tools and Chromium for the browser test
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	@if [ "$$(id -u)" = 0 ] && ! command -v chromium >/dev/null; then \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: the browser test will skip"; fi

test:   ## all tests, notebooks included (nbval)
	$(BIN)/python -m pytest -ra --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg tests notebooks

run:    ## the whole notebook chain with papermill into runs/<name>/ (parameters: pipeline.yml)
	$(BIN)/gender-lib run --config pipeline.yml

test-fast:  ## unit tests only
	$(BIN)/python -m pytest -ra -m "not slow" tests
