# mosquitto-policyd — the two commands a user needs are `make demo` and `make test`.
# Everything else is a step they call.

PYTHON      ?= python3
VENV        ?= .venv
VPY         := $(VENV)/bin/python
PROTO       := proto/policyd/v1/policy.proto
PY_GEN      := policyd/v1/policy_pb2.py policyd/v1/policy_pb2_grpc.py
PLUGIN      := plugin_c/build/mosquitto_policyd.so
PYTEST_ARGS ?=

.PHONY: all deps system-deps venv proto plugin build test test-unit test-e2e demo bench clean help

all: build

help:
	@echo "make demo    install, build, issue certificates, run the seed scenario end to end"
	@echo "make test    build and run every test (unit, engine properties, end-to-end)"
	@echo "make build   generate stubs from proto/ and build the plugin"
	@echo "make bench   run the benchmarks in bench/ (figures go to docs/benchmarks.md)"

deps: system-deps venv

system-deps:
	@scripts/install-system-deps.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[dev]'
	touch $@

# Python stubs live inside the package as policyd.v1 (git-ignored, never edited).
proto: $(PY_GEN)

$(PY_GEN): $(PROTO) $(VENV)/.installed
	$(VPY) -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. --pyi_out=. $(PROTO)

plugin: $(PLUGIN)

$(PLUGIN): $(PROTO) $(wildcard plugin_c/src/*.c plugin_c/src/*.h) plugin_c/Makefile
	$(MAKE) -C plugin_c

build: deps proto plugin

test: build
	$(VPY) -m pytest $(PYTEST_ARGS)

test-unit: proto
	$(VPY) -m pytest tests/unit $(PYTEST_ARGS)

test-e2e: build
	$(VPY) -m pytest tests/e2e $(PYTEST_ARGS)

demo: build
	VENV=$(VENV) scripts/demo.sh

bench: build
	$(VPY) bench/broker_throughput.py

clean:
	$(MAKE) -C plugin_c clean
	rm -rf policyd/v1 .pytest_cache .hypothesis
