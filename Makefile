# The two commands of the README: `make demo` and `make test`. Both set up .venv/ first
# (scripts/setup_env.sh is idempotent: it does nothing when the environment is complete).
VENV    ?= .venv
PYTHON  := $(VENV)/bin/python

.PHONY: setup demo check test lint format gpu-stack slurm

setup:
	@bash scripts/setup_env.sh

demo: setup
	@bash scripts/demo.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

PYTEST_WORKERS ?= 2

# The quick check: lint and the in-process tests (none starts a process: tests/process_guard.py).
# Three workers: some of these tests sleep (the stall watchdog's) or wait on files, and a third
# worker keeps both cores busy meanwhile (3 min 53 s against 4 min 11 s with two, one run each).
CHECK_WORKERS ?= 3
check: lint
	$(PYTHON) -m pytest -n $(CHECK_WORKERS) -m "not subprocess" --durations=10 $(PYTEST_ARGS)

# tests/test_cluster.py starts a single-node Slurm: its Debian packages come first (root).
# tests/test_jax_backend.py runs the models on Keras's JAX backend in .venv-jax (no TF).
# Two pytest-xdist workers keep both cores busy while a test waits on process start-up
# (PYTEST_WORKERS=0 runs in one process).
test: lint
	@bash scripts/install_slurm.sh
	@bash scripts/setup_jax_env.sh
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=25 $(PYTEST_ARGS)

# The GPU flavour (tensorflow[and-cuda], Horovod with NCCL + MPI + Gloo) built into its own
# venv and checked; needs no GPU (docs/gpu_stack.md).
GPU_VENV ?= .venv-gpu
gpu-stack:
	@VENV=$(GPU_VENV) TFCONVNETS_FLAVOUR=gpu bash scripts/setup_env.sh
	@VENV=$(GPU_VENV) bash scripts/check_gpu_stack.sh

# Slurm + munge for tests/test_cluster.py's single-node cluster (root, apt-get).
slurm:
	@bash scripts/install_slurm.sh
