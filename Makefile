# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.13 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo dev test venv clean

venv: $(STAMP)

$(STAMP): setup.py
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 13), "Python >= 3.13 is required, found " + sys.version' 
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
