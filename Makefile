# The README's two commands. Both set everything up on a fresh machine (Python + root is enough):
# a .venv with the tested version set, the project with its libero and dev extras, and Mesa's GL libraries.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo closed-loop closed-loop-pi0 experiment test test-slow lint setup clean-venv

setup: $(STAMP)

# Re-installs only when the dependency set changes.
$(STAMP): pyproject.toml requirements-cpu.txt scripts/setup_env.sh
	VENV=$(VENV) bash scripts/setup_env.sh
	touch $(STAMP)

demo: $(STAMP)
	USE_TF=0 $(PYTHON) scripts/demo.py

# Oracle demonstrations -> a tiny VLA trained from scratch -> LIBERO in process and through the server, from the RLDS
# copy and from the LeRobot copy of the demonstrations; after the shared stages (demonstrations in both formats, the
# base model) the two copies train and evaluate side by side, one process each (one torch thread each); resumable,
# cached in ~/.cache/spatial_forcing/closed_loop (CLOSED_LOOP_ARGS: e.g. --num_demos 10 --max_steps 1000).
CLOSED_LOOP_ARGS ?=
CLOSED_LOOP := OMP_NUM_THREADS=1 $(PYTHON) scripts/closed_loop.py
closed-loop: $(STAMP)
	$(MAKE) -j2 closed-loop-rlds closed-loop-lerobot

.PHONY: closed-loop-shared closed-loop-rlds closed-loop-lerobot
closed-loop-shared: $(STAMP)
	$(CLOSED_LOOP) --stages '[demos,base]' $(CLOSED_LOOP_ARGS)
	$(CLOSED_LOOP) --data_format lerobot --stages '[demos]' $(CLOSED_LOOP_ARGS)

closed-loop-rlds closed-loop-lerobot: closed-loop-shared
	$(CLOSED_LOOP) --data_format $(@:closed-loop-%=%) $(CLOSED_LOOP_ARGS)

# The same closed loop with a tiny pi0 (flow matching) in place of the tiny VLA, from the RLDS copy
closed-loop-pi0: $(STAMP)
	$(CLOSED_LOOP) --model_family pi0 $(CLOSED_LOOP_ARGS)

# The fast suite (within 15 minutes on 2 cores); the tests marked slow (long simulator runs, training runs, golden
# parity of whole models) run in `make test-slow`. CI (.ci/run) runs both. Times per folder: docs/reference/test-times.md.
# TEST_WORKERS pytest-xdist processes share the tests out a file at a time, each torch on one thread
# (TEST_WORKERS=0: one process).
TEST_WORKERS ?= 2
PYTEST := OMP_NUM_THREADS=1 $(PYTHON) -m pytest -n $(TEST_WORKERS) --dist loadfile
test: $(STAMP)
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PYTEST) -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean-venv:
	rm -rf $(VENV)

# The Spatial Forcing mechanism experiment (experiments/sf_mechanism/run.py; resumable):
#   make experiment                      the full run (~3.7 h here: one task per session with --tasks, then --combine);
#                                        make experiment EXPERIMENT_ARGS=--quick for one task and seed
EXPERIMENT_ARGS ?=
experiment: $(STAMP)
	PYTHONPATH=. $(PYTHON) experiments/sf_mechanism/run.py $(EXPERIMENT_ARGS)
