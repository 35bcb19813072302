# Two entry points for a newcomer (see README.md):
#   make demo   set up, then run the main job on the embedded default (no cluster, no GPU)
#   make test   set up, then run the whole test suite and the static checks
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench stubs extender plugin clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) scripts/demo.py

# pytest exits 5 when it collects no test: that is not a failure of the suite.
test: setup
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; [ $$rc -eq 0 ]
	$(MAKE) --no-print-directory lint

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict topology extender simulator
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) benchmarks/bench_allocator.py
	$(PY) benchmarks/bench_extender.py
	$(PY) benchmarks/bench_simulator.py

stubs: setup
	$(PY) -m plugin.api.generate

extender: setup
	$(VENV)/bin/gputopo-extender --port 8888 --cluster-file manifests/examples/cluster.yaml

plugin: setup
	mkdir -p /tmp/gputopo-dp
	$(VENV)/bin/gputopo-device-plugin --standalone --fake-topology dgx1-v100 --kubelet-dir /tmp/gputopo-dp

clean:
	rm -rf $(VENV) build *.egg-info
