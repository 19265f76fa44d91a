# Two entry points: `make demo` and `make test`. Both create .venv on first use.
# The newest Python >= 3.11 on the PATH. Each candidate is run, not just found: a pyenv shim exists for
# every installed version but fails outside the directories that select it.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && command -v $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo dev test venv bytecode lock clean

venv: $(STAMP)

$(STAMP): setup.py
	@test -n "$(PYTHON)" || { echo "Python >= 3.11 is required: no python3.13, python3.12, python3.11 or python3 >= 3.11 on the PATH" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required, found " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The editable install leaves our own modules uncompiled, and where PYTHONDONTWRITEBYTECODE is set Python never
# writes them, so every process (run, code server, daemon, worker) compiled them again: ~0.4 CPU-s each.
# Python checks each .pyc against its source, so a stale one is never used.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q -j 0 reporting_pipeline > /dev/null

demo: bytecode
	$(BIN)/reporting-pipeline demo $(DEMO_ARGS)

dev: bytecode
	$(BIN)/reporting-pipeline dev $(DEV_ARGS)

# Test files are spread over TEST_WORKERS processes (0: all in this one). Most tests wait on processes they
# started (servers, runs, pods), so two workers keep a 2-core machine busy; a file's tests stay together,
# sharing its module fixtures.
TEST_WORKERS ?= 2
test: bytecode
	$(BIN)/python -m pytest reporting_pipeline_tests -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# deploy/requirements.lock: every package the image installs, pinned with its hashes, resolved from setup.py's
# install_requires alone (no extras) for the image's Python. Existing pins are kept unless setup.py needs
# otherwise; `make lock LOCK_ARGS=--upgrade` moves everything to the newest allowed. PyPI alone, whatever
# pip's local configuration adds (extra indexes, local wheels), so the hashes are those the image build sees.
lock: $(STAMP)
	@test "$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$$(cat .python-version)" \
		|| { echo "make lock needs Python $$(cat .python-version), the image's" >&2; exit 1; }
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe \
		--strip-extras --no-emit-index-url --no-emit-find-links --index-url https://pypi.org/simple \
		--output-file deploy/requirements.lock $(LOCK_ARGS) setup.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
	find reporting_pipeline -name __pycache__ -prune -exec rm -rf {} +
