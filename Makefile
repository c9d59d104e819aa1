# Everything runs from the project's own virtual environment (.venv), created by `make install`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= cpu
STAMP  := $(VENV)/.installed-$(TORCH)
export BENTOML_DO_NOT_TRACK := True
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false

.PHONY: install browser containers images demo test test-fast bench bench-full clean-state

install: $(STAMP)

# constraints.txt is the lock: the exact versions tested on these machines (CPU torch, the tested default).
# `make install TORCH=cuda` installs the same torch version's CUDA build from PyTorch's index instead
# (TORCH_INDEX; untested here: these machines have no GPU), and everything else from the same lock.
TORCH_INDEX ?= https://download.pytorch.org/whl/cu128
TORCH_VERSION := $(shell sed -n 's/^torch==\([0-9.]*\).*/\1/p' constraints.txt)
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(TORCH),cuda)
	grep -v '^torch==' constraints.txt > $(VENV)/constraints-cuda.txt
	$(BIN)/python -m pip uninstall -q -y torch
	$(BIN)/python -m pip install --disable-pip-version-check -q "torch==$(TORCH_VERSION)" --index-url $(TORCH_INDEX)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c $(VENV)/constraints-cuda.txt -e '.[test]'
else
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[test]'
endif
	$(BIN)/python -c "import torch; print('torch', torch.__version__, 'CUDA' if torch.cuda.is_available() else 'CPU')"
	rm -f $(VENV)/.installed-*; touch $(STAMP)

# The whole pipeline on the demo config, on data/ or DATA=path. data/ is the synthetic set that
# data.dvc versions: it is generated (deterministically, same md5) when absent.
demo: install
	test -d data || $(BIN)/cmunext -q data synth --out data --n 160 --seed 0
	$(BIN)/cmunext pipeline run --config configs/demo.yaml $(if $(DATA),--set data.source=$(DATA))

# Headless Chromium for the web-page test (Debian's package; the test skips without it).
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the serving page test will skip"; }

# podman (with runc) and debootstrap from Debian's packages, for `make images` and the container tests; podman's
# settings stay in the project (infra/containers/containers.conf, read through CONTAINERS_CONF).
containers:
	@command -v podman >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null) || \
	  echo "podman not installed: the container tests will skip"; }

# The component and MLflow images (names: infra/k8s/components/images/images.conf). Without a reachable image
# registry the base is built from Debian packages once (infra/containers/base-image.sh) and reused.
images: install containers
	$(BIN)/cmunext images build

# The test suite CI runs: unit tests, integration tests with real services, and the slow fault, load and
# container tests (marked `slow`); BUSI tests skip if the dataset is absent. test-fast leaves the slow ones out.
# The images build in the background meanwhile (one build at a time: the container tests wait for it), at a
# lower priority: the tests' torch threads wait on each other, and a build running beside them at the same
# priority slows them more than it gains.
# TEST_WORKERS pytest processes (pytest-xdist) share the modules out whole (--dist loadfile: a module's servers
# and pipeline runs stay one worker's), in the order conftest.py gives them (slowest last). Most of a pipeline
# test is one process importing or waiting on another, so two workers on two cores finish sooner than one.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: install browser containers
	@mkdir -p build; if command -v podman >/dev/null 2>&1; then \
	  echo "building the images in the background (build/images-build.log); the container tests run last"; \
	  nice -n 10 $(BIN)/cmunext images build > build/images-build.log 2>&1 & fi; \
	$(PYTEST); status=$$?; wait; exit $$status

test-fast: install browser
	$(PYTEST) -m "not slow"

# A few minutes; results in benchmarks/out/ (results.md: the table docs/results.md quotes) and plots in docs/results/. bench-full: about an hour.
bench: install
	$(BIN)/python benchmarks/run_all.py

bench-full: install
	$(BIN)/python benchmarks/run_all.py --full

clean-state:
	rm -rf .cmunext
