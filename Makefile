# Two entry points for a newcomer (see README.md):
#   make demo   set up, then run the main job on the embedded default (no cluster, no GPU)
#   make test   set up, then run the whole test suite and the static checks
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test e2e cluster-up cluster-down chart lint bench bench-scheduler stubs extender plugin clean

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

# The end-to-end suite alone: real kube-apiserver, kube-scheduler, controller-manager and
# kubelets (built once from the k8s.io/kubernetes Go module; needs Go, etcd and root).
e2e: setup
	$(PY) -m pytest -q tests/e2e

# A cluster to try things by hand (tests/e2e/cluster/up --help); stop it with cluster-down.
cluster-up: setup
	tests/e2e/cluster/up --dir /tmp/gputopo-e2e

cluster-down:
	tests/e2e/cluster/down --dir /tmp/gputopo-e2e

# The Helm chart: lint it and render its defaults (helm built once from its Go module).
chart:
	helm="$$(tests/e2e/tools/helm/build)/helm" && \
	  $$helm lint --strict manifests/helm/gpu-topology-scheduler && \
	  $$helm template gputopo manifests/helm/gpu-topology-scheduler --namespace gputopo-system --include-crds

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict topology extender plugin simulator console
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) benchmarks/bench_allocator.py
	$(PY) benchmarks/bench_extender.py
	$(PY) benchmarks/bench_plugin.py
	$(PY) benchmarks/bench_simulator.py

# The real kube-scheduler with and without the extender, 1,000 and 5,000 nodes (~15 min).
bench-scheduler: setup
	$(PY) benchmarks/bench_scheduler.py --nodes 1000,5000 --pods 2000

stubs: setup
	$(PY) -m plugin.api.generate

extender: setup
	$(VENV)/bin/gputopo-extender --port 8888 --cluster-file examples/cluster.yaml

plugin: setup
	mkdir -p /tmp/gputopo-dp
	$(VENV)/bin/gputopo-device-plugin --standalone --fake-topology dgx1-v100 --kubelet-dir /tmp/gputopo-dp

clean:
	rm -rf $(VENV) build *.egg-info
