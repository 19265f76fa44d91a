# Two entry points: `make demo` and `make test`. Both create .venv on first use.
# The newest Python >= 3.11 on the PATH. Each candidate is run, not just found: a pyenv shim exists for
# every installed version but fails outside the directories that select it.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && command -v $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo dev test venv clean

venv: $(STAMP)

$(STAMP): setup.py
	@test -n "$(PYTHON)" || { echo "Python >= 3.11 is required: no python3.13, python3.12, python3.11 or python3 >= 3.11 on the PATH" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required, found " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/reporting-pipeline demo $(DEMO_ARGS)

dev: $(STAMP)
	$(BIN)/reporting-pipeline dev $(DEV_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest reporting_pipeline_tests $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo-output .pytest_cache
