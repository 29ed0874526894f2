# The two commands of the README. Both install what they need into the current Python environment.
PYTHON ?= python3
# pytest-xdist workers; notebooks are split by file (--dist loadfile), never by cell.
WORKERS ?= 2
# Console scripts live beside the interpreter (a venv need not be activated).
BIN := $(shell $(PYTHON) -c "import os, sys; print(os.path.dirname(sys.executable))")

.PHONY: book test labs outputs

book:
	$(PYTHON) -m pip install -q -e ".[book]"
	$(BIN)/jupyter-book build -W -n --keep-going .

# Ruff (configured in pyproject.toml) lints and checks the format first: CI enforces them.
# GPTCOURSE_SIZE=smoke makes every training notebook run in seconds; IPYTHONDIR turns off
# ANSI colours in kernel tracebacks so failures read cleanly in CI logs.
test:
	$(PYTHON) -m pip install -q -e ".[test]"
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	GPTCOURSE_SIZE=smoke IPYTHONDIR=$(CURDIR)/tests/ipython \
	$(PYTHON) -m pytest -n $(WORKERS) --dist loadfile --nbval-lax -p no:cacheprovider --durations=15

# Regenerate labs/ from solutions/ (and the Colab header of every notebook).
labs:
	$(PYTHON) -m gptcourse.labs build

# Re-execute every chapter and solution at this machine's size (cpu here, gpu on CUDA), one at a
# time, and write the outputs back (gpu-size outputs are never replaced by cpu-size ones).
outputs:
	$(PYTHON) -m pip install -q -e ".[test]"
	$(PYTHON) -m gptcourse.outputs
