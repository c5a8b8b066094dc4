# mosquitto-policyd — the two commands a user needs are `make demo` and `make test`.
# Everything else is a step they call.

PYTHON      ?= python3
VENV        ?= .venv
VPY         := $(VENV)/bin/python
PROTO       := proto/policyd/v1/policy.proto
PY_GEN      := policyd/v1/policy_pb2.py policyd/v1/policy_pb2_grpc.py
PLUGIN      := plugin_c/build/mosquitto_policyd.so
PYTEST_ARGS ?=
# The second broker the end-to-end suite runs against: the vendored Mosquitto release
# (third_party/), built once into an ignored folder. The first is Debian's `mosquitto`.
MOSQUITTO_21      := 2.1.2
MOSQUITTO_21_DIR  := .build/mosquitto-$(MOSQUITTO_21)
MOSQUITTO_21_BIN  := $(MOSQUITTO_21_DIR)/src/mosquitto

.PHONY: all deps system-deps run-deps test-deps venv proto plugin build broker-2.1 test test-unit test-e2e test-e2e-2.1 demo bench clean help test-asan valgrind install install-daemon fuzz-short fuzz-long reliability-report test-e2e-asan

all: build

help:
	@echo "make demo    install, build, issue certificates, run the seed scenario end to end"
	@echo "make test    build and run every test (unit, engine properties, end-to-end)"
	@echo "make build   generate stubs from proto/ and build the plugin"
	@echo "make test-e2e-2.1  the end-to-end suite on Mosquitto 2.1 (built once from third_party/)"
	@echo "make bench   run the benchmarks in bench/ (figures go to docs/benchmarks.md)"
	@echo "make test-asan  the in-process shim tests against the plugin built with ASan + UBSan"
	@echo "make valgrind   the real broker with the plugin under valgrind memcheck"
	@echo "make test-e2e-asan  the end-to-end suite with the ASan + UBSan plugin inside the real broker"
	@echo "make fuzz-short / fuzz-long  libFuzzer targets in fuzz/ (~20 s, in make test / FUZZ_SECONDS each, default 600)"
	@echo "make reliability-report  render docs/reliability.md from the figures the last test run recorded"
	@echo "make install the plugin, systemd units and example config (DESTDIR, PLUGIN_DIR; docs/operations.md)"

deps: system-deps venv

# Debian packages by step (scripts/install-system-deps.sh): a build host needs only `build`.
system-deps:
	@scripts/install-system-deps.sh build

run-deps:
	@scripts/install-system-deps.sh build run

test-deps:
	@scripts/install-system-deps.sh build run test

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

broker-2.1: $(MOSQUITTO_21_BIN)

$(MOSQUITTO_21_BIN): third_party/mosquitto-$(MOSQUITTO_21)/mosquitto-$(MOSQUITTO_21).tar.gz scripts/build-mosquitto.sh
	scripts/build-mosquitto.sh $(MOSQUITTO_21) $(MOSQUITTO_21_DIR)

# Everything on Debian's Mosquitto 2.0, then the end-to-end suite again on 2.1.
test: build test-deps broker-2.1
	$(VPY) -m pytest $(PYTEST_ARGS)
	POLICYD_BROKER=$(CURDIR)/$(MOSQUITTO_21_BIN) $(VPY) -m pytest tests/e2e $(PYTEST_ARGS)

test-unit: proto test-deps
	$(VPY) -m pytest tests/unit $(PYTEST_ARGS)

test-e2e: build test-deps
	$(VPY) -m pytest tests/e2e $(PYTEST_ARGS)

test-e2e-2.1: build test-deps broker-2.1
	POLICYD_BROKER=$(CURDIR)/$(MOSQUITTO_21_BIN) $(VPY) -m pytest tests/e2e $(PYTEST_ARGS)

demo: build run-deps
	VENV=$(VENV) scripts/demo.sh

bench: build run-deps
	$(VPY) bench/broker_throughput.py

# The in-process shim tests (cffi + stub broker, real policyd) against the plugin built with
# ASan + UBSan. libasan must be the first library of the process, hence LD_PRELOAD (the test
# conftest keeps it away from the daemon and compilers it starts). Python itself is not
# leak-clean, so leak detection is off; memory errors and undefined behaviour abort.
ASAN_PLUGIN := plugin_c/build/asan/mosquitto_policyd.so

test-asan: proto test-deps
	$(MAKE) -C plugin_c SANITIZE=1
	LD_PRELOAD=$$($(CC) -print-file-name=libasan.so) \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	POLICYD_PLUGIN=$(ASAN_PLUGIN) $(VPY) -m pytest -p no:cacheprovider tests/shim $(PYTEST_ARGS)

# The end-to-end suite with the ASan + UBSan plugin loaded into the real broker (libasan
# preloaded into mosquitto only). Any report aborts the broker and lands in $(SAN_LOGS).
SAN_LOGS := /tmp/policyd-sanitizer-logs

test-e2e-asan: build test-deps
	$(MAKE) -C plugin_c SANITIZE=1
	rm -rf $(SAN_LOGS) && mkdir -p -m 1777 $(SAN_LOGS)
	POLICYD_PLUGIN=$(CURDIR)/$(ASAN_PLUGIN) POLICYD_BROKER_PRELOAD=$$($(CC) -print-file-name=libasan.so) \
	POLICYD_SANITIZER_LOGS=$(SAN_LOGS) $(VPY) -m pytest -p no:cacheprovider tests/e2e $(PYTEST_ARGS)
	@if ls $(SAN_LOGS)/* >/dev/null 2>&1; then cat $(SAN_LOGS)/*; echo "sanitizer reports above"; exit 1; fi
	@echo "test-e2e-asan: no sanitizer reports"

# The real broker with the plugin under valgrind memcheck, with a few real clients.
valgrind: build test-deps
	$(VPY) tests/shim/valgrind_broker.py

# libFuzzer targets over the plugin's untrusted input (fuzz/Makefile); the short run is also
# part of `make test` (tests/unit/test_fuzz_targets.py).
FUZZ_SECONDS ?= 600

fuzz-short: plugin test-deps
	$(MAKE) -C fuzz short

fuzz-long: plugin test-deps
	$(MAKE) -C fuzz long LONG_SECONDS=$(FUZZ_SECONDS)

# docs/reliability.md's table from .bench/reliability/ (written by the fault, hostile and fuzz tests).
reliability-report:
	$(VPY) bench/reliability.py

# Installation (docs/operations.md). Debian keeps Mosquitto plugins in the multiarch
# library directory, next to mosquitto_dynamic_security.so.
DESTDIR     ?=
PLUGIN_DIR  ?= /usr/lib/$(shell gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
UNIT_DIR    ?= /etc/systemd/system
SYSUSERS_DIR ?= /usr/lib/sysusers.d
POLICYD_CONF ?= /etc/policyd
DOC_DIR     ?= /usr/share/doc/mosquitto-policyd
POLICYD_VENV ?= /opt/policyd

install: $(PLUGIN)
	install -D -m 0644 $(PLUGIN) $(DESTDIR)$(PLUGIN_DIR)/mosquitto_policyd.so
	install -D -m 0644 examples/systemd/policyd.service $(DESTDIR)$(UNIT_DIR)/policyd.service
	install -D -m 0644 examples/systemd/mosquitto.service.d/policyd.conf $(DESTDIR)$(UNIT_DIR)/mosquitto.service.d/policyd.conf
	install -D -m 0644 examples/systemd/policyd.sysusers.conf $(DESTDIR)$(SYSUSERS_DIR)/policyd.conf
	install -d -m 0755 $(DESTDIR)$(POLICYD_CONF)
	@# Never overwrite the operator's rules on upgrade. They may hold password hashes: 0640,
	@# group policyd (the daemon runs as policyd), so the user is made now when installing for real.
	if [ -z "$(DESTDIR)" ] && command -v systemd-sysusers >/dev/null; then systemd-sysusers $(SYSUSERS_DIR)/policyd.conf; fi
	test -e $(DESTDIR)$(POLICYD_CONF)/rules.yaml || install -m 0640 examples/rules.yaml $(DESTDIR)$(POLICYD_CONF)/rules.yaml
	if getent group policyd >/dev/null; then chgrp policyd $(DESTDIR)$(POLICYD_CONF)/rules.yaml; fi
	install -D -m 0644 examples/mosquitto.conf $(DESTDIR)$(DOC_DIR)/examples/mosquitto.conf
	install -D -m 0644 examples/rules.yaml $(DESTDIR)$(DOC_DIR)/examples/rules.yaml
	install -D -m 0644 -t $(DESTDIR)$(DOC_DIR) README.md docs/*.md
	install -D -m 0644 -t $(DESTDIR)$(DOC_DIR)/examples/prometheus examples/prometheus/*

# The daemon in its own venv (ExecStart of policyd.service): pip install . builds the stubs.
install-daemon:
	$(PYTHON) -m venv $(POLICYD_VENV)
	$(POLICYD_VENV)/bin/pip install --quiet --upgrade .

clean:
	$(MAKE) -C plugin_c clean
	$(MAKE) -C fuzz clean
	rm -rf policyd/v1 .pytest_cache .hypothesis .build
