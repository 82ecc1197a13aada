# orbit-edge -- every target installs what it needs (apt-get + pip into .venv/).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        := .venv
VPY         := $(VENV)/bin/python
VPIP        := $(VENV)/bin/pip
CACHE       ?= $(HOME)/.cache/orbit-edge
PYTEST_ARGS ?=
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# Debian packages: cross compiler + arm64 Python headers (wheel-aarch64), Debian's own python3.11
# with venv (its sysconfigdata drives the cross build), qemu-user + mmdebstrap (arm64 rootfs tests).
APT_PACKAGES := gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libpython3.11-dev:arm64 python3.11 \
                python3.11-venv python3.11-dev qemu-user-static mmdebstrap binfmt-support \
                qemu-system-arm kmod cpio
# (the flight board's kernel and busybox are arm64 packages fetched with apt-get download by
#  firmware_sim/image.py, not installed on the host)

.PHONY: help deps-apt venv build wheel wheel-aarch64 rootfs-aarch64 test test-aarch64 bench bench-vlm models demo \
        campaign sim sim-shell clean

help:
	@echo "make demo           build, then run the flight loop + ground tool on the default scene"
	@echo "make test           build everything and run the whole test suite (incl. the arm64 check)"
	@echo "make build          .venv + compiled kernels (in place, editable install)"
	@echo "make wheel          x86_64 wheel into dist/"
	@echo "make wheel-aarch64  cross-built manylinux aarch64 wheel into dist/"
	@echo "make bench          benchmarks against peers -> bench/results.json, bench/RESULTS.md"
	@echo "make bench-vlm      the on-board VLM vs transformers generate() (builds a ~2 GB model once; not in CI)"
	@echo "make campaign       the fault-injection campaigns at their full counts (~30 min) -> build/campaign-results.jsonl"
	@echo "make sim            the QEMU arm64 flight board: every scenario (SCENARIO=name for one)"
	@echo "make sim-shell      boot the emulated flight board to a shell"
	@echo "make models         retrain + export the shipped detectors (torch, slow; not needed by test/demo)"

deps-apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:$$missing"; \
	  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.stamp: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VPIP) install -q --upgrade pip
	$(VPIP) install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.stamp

build: venv
	$(VPY) setup.py -q build_ext --inplace -j 2
	@$(VPY) -c "import edge" 2>/dev/null && [ -x $(VENV)/bin/edge ] || \
	  $(VPIP) install -q --no-build-isolation --no-deps -e .

wheel: venv
	rm -rf build/ dist/orbit_edge-*x86_64*.whl
	$(VPY) -m build --wheel --no-isolation --outdir dist/ .

wheel-aarch64: deps-apt
	bash firmware_sim/cross_wheel.sh dist/

rootfs-aarch64: deps-apt
	bash firmware_sim/rootfs.sh

test: build deps-apt
	$(MAKE) --no-print-directory wheel-aarch64
	$(VPY) -m pytest $(PYTEST_ARGS)

test-aarch64: build deps-apt wheel-aarch64
	$(VPY) -m pytest -m aarch64 $(PYTEST_ARGS)

$(VENV)/.stamp-bench: $(VENV)/.stamp requirements-bench.txt
	$(VPIP) install -q -r requirements-bench.txt
	touch $@

bench: build $(VENV)/.stamp-bench
	$(VPY) -m bench.run

# The VLM benchmark (issue 7; not in CI): transformers + torch (the CPU wheel pip takes from local disk via
# its find-links) in their own venv, NEVER torchvision; models/vlm/build.py --dims real builds the random-weight
# 450M-dimension model once into ~/.cache/orbit-edge/vlm-real-<key>/ -> bench/results.vlm.json, bench/RESULTS.md
.venv-vlm/.stamp: models/requirements-vlm.txt
	$(PYTHON) -m venv .venv-vlm
	.venv-vlm/bin/pip install -q --upgrade pip
	.venv-vlm/bin/pip install -q -r models/requirements-vlm.txt
	touch $@

bench-vlm: build .venv-vlm/.stamp
	$(VPY) -m bench.bench_vlm

# Model build tools (torch, litert-torch: ~2 GB) live in their own venv, never in the runtime one.
.venv-models/.stamp: models/requirements.txt models/requirements-tflite.txt requirements-dev.txt
	$(PYTHON) -m venv .venv-models
	.venv-models/bin/pip install -q --upgrade pip
	.venv-models/bin/pip install -q -r requirements-dev.txt -r models/requirements.txt
	touch $@

models: build .venv-models/.stamp
	.venv-models/bin/python -m models.build all

# The emulated flight board (firmware_sim/): image built or reused, then the scenarios.
SIM_ARGS := $(if $(SCENARIO),--scenario $(SCENARIO),)
sim: build deps-apt wheel-aarch64
	$(VPY) -m firmware_sim.sim $(SIM_ARGS)

sim-shell: build deps-apt wheel-aarch64
	$(VPY) -m firmware_sim.sim --shell

# Fault-injection campaigns at the issue's full counts (make test runs the same tests at small counts).
campaign: build
	mkdir -p build && rm -f build/campaign-results.jsonl
	EDGE_CAMPAIGN=full EDGE_CAMPAIGN_RESULTS=$(CURDIR)/build/campaign-results.jsonl \
	  $(VPY) -m pytest -q -s -p no:cacheprovider tests/test_campaign_memory.py tests/test_campaign_journal.py \
	  tests/test_campaign_ground.py tests/test_reliability_e2e.py $(PYTEST_ARGS)
	@echo "campaign results: build/campaign-results.jsonl"

# The main job on the bundled default scene: generate it, `edge run`, `edge-ground decode` + `render`,
# then the figures (edge/demo.py). Outputs in demo-out/.
demo: build
	$(VPY) -m edge.demo --out demo-out

clean:
	rm -rf build/ dist/ edge/_ext/*.so ext/*.c.tmp .pytest_cache .hypothesis
	find ext -name '*.pyx' | sed 's/\.pyx$$/.c/' | xargs rm -f
