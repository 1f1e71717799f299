# Two entry points (see README): `make run` (small end-to-end job on the CPU) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first, so the `torch` extra never pulls CUDA wheels.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[torch,test]"
	touch $(STAMP)

install: $(STAMP)

# The tiny RL experiment: a supervised warm start on Countdown, then 100 CISPO steps; rerunning resumes (a
# finished run just prints its summary). WORKDIR=... picks another run directory.
WORKDIR ?= runs/rl_countdown

run: $(STAMP)
	JAX_PLATFORMS=$${JAX_PLATFORMS:-cpu} $(VENV)/bin/m1jax rl --config=experiments/rl.py:tiny_countdown \
		--config.steps=100 --workdir=$(WORKDIR) $(ARGS)

test: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -n 2 --durations=15 tests $(ARGS)

clean:
	rm -rf $(VENV)
