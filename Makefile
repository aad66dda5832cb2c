# flyball — the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STATE  := .state/brokers
PYTEST_ARGS ?=

.PHONY: demo up test test-unit check bench bench-shim quality quality-tune quality-sim quality-releases chaos soak install install-test clean brokers-start brokers-stop

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-server: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[server]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-server

install: $(VENV)/.installed-server
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/flyball demo --data-dir .state/demo-$$$$

up: install
	$(BIN)/flyball up

# Starts both test brokers, runs the whole suite, stops the brokers even on failure.
# With CI=true a broker that does not start fails the run; outside CI a machine without
# Java/Maven runs the Tansu suite and says loudly that the Apache Kafka suite did not run.
test: install-test
	@rc=0; \
	$(BIN)/python scripts/testbrokers.py start --state $(STATE) || rc=$$?; \
	if [ $$rc -eq 3 ] && [ -z "$$CI" ]; then kafka_missing=1; \
	elif [ $$rc -ne 0 ]; then $(BIN)/python scripts/testbrokers.py stop --state $(STATE); \
	  echo "FAILED: a test broker did not start (exit $$rc)"; exit 1; fi; \
	trap '$(BIN)/python scripts/testbrokers.py stop --state $(STATE) >/dev/null 2>&1' EXIT INT TERM; \
	set -a; . $(STATE)/env; set +a; \
	sh scripts/ensure-chromium.sh || { if [ -n "$$CI" ]; then echo "FAILED: chromium is missing (the console's browser suite needs it)"; exit 1; fi; browser_missing=1; }; \
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS); trc=$$?; \
	if [ -n "$$browser_missing" ]; then \
	  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; \
	  echo "!!! The console's browser suite did NOT run: /usr/bin/chromium is missing. !!!"; \
	  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; fi; \
	if [ -n "$$kafka_missing" ]; then \
	  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; \
	  echo "!!! The Apache Kafka suite did NOT run: java or mvn is missing here. !!!"; \
	  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; fi; \
	exit $$trc

# ruff, mypy --strict on the packages, and the import-linter contracts (pyproject.toml)
check: install-test
	$(BIN)/python scripts/check.py

test-unit: install-test
	$(BIN)/python -m pytest -p no:cacheprovider tests/unit $(PYTEST_ARGS)

bench: install-test
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/shim.py

bench-shim: install-test
	$(BIN)/python bench/shim.py

clean:
	-$(BIN)/python scripts/testbrokers.py stop --state $(STATE)
	rm -rf .state

# Detector quality on independent traffic (bench/evaltraffic.py), held-out seeds only, four
# traffic variants (A, B; S and U: the sizes of issue #13's brief, strong and subtle): the
# detection curve (recall by kind x size x volume), false alerts and pages per tenant-day, delay
# (bench/detection_curve.py; docs/DETECTION.md). quality-tune: the tuning seeds; quality-sim: the
# project's own simulator (bench/quality.py).
quality: install-test
	$(BIN)/python bench/detection_curve.py --split heldout --variant A
	$(BIN)/python bench/detection_curve.py --split heldout --variant B --jobs 1
	$(BIN)/python bench/detection_curve.py --split heldout --variant S
	$(BIN)/python bench/detection_curve.py --split heldout --variant U
	$(BIN)/python bench/releases.py --share 0.05

quality-tune: install-test
	$(BIN)/python bench/detection_curve.py --split tune

quality-sim: install-test
	$(BIN)/python bench/quality.py

# Release safety (bench/releases.py): false rollbacks on clean releases, regressions caught and
# time to verdict at a 5% canary of 1 call/s, on the held-out seeds (201-210), with the baseline.
quality-releases: install-test
	$(BIN)/python bench/releases.py --share 0.05

# Break it on purpose (chaos/, docs/RELIABILITY.md): fault scenarios over real processes on a
# fresh Apache Kafka of their own, then a soak of SOAK_S seconds (90 here; `make soak`: 1,200, the last 600 judged).
# The last run's figures are written into docs/RELIABILITY.md. About 10 minutes in all.
CHAOS_STATE   := .state/chaos-brokers
SOAK_S ?= 90
KAFKA_VERSION := $(shell grep -A1 '<artifactId>kafka_2.13</artifactId>' brokers/pom.xml | sed -n 's:.*<version>\(.*\)</version>.*:\1:p')
define chaos_run
	@mkdir -p .state/chaos; rm -f .state/chaos/$(4).jsonl; \
	$(BIN)/python scripts/testbrokers.py start --kafka --state $(CHAOS_STATE) || { \
	  $(BIN)/python scripts/testbrokers.py stop --kafka --state $(CHAOS_STATE); \
	  echo "FAILED: the chaos suite needs Apache Kafka (java + mvn)"; exit 1; }; \
	trap '$(BIN)/python scripts/testbrokers.py stop --kafka --state $(CHAOS_STATE) >/dev/null 2>&1' EXIT INT TERM; \
	set -a; . $(CHAOS_STATE)/env; set +a; \
	FLYBALL_CHAOS_RESULTS=$(abspath .state/chaos/$(4).jsonl) FLYBALL_SOAK_S=$(2) FLYBALL_SOAK_RATE=$(3) \
	  $(BIN)/python -m pytest -p no:cacheprovider $(1) $(PYTEST_ARGS); rc=$$?; \
	$(BIN)/python scripts/reliability_report.py .state/chaos/$(4).jsonl docs/RELIABILITY.md --section $(4) \
	  --broker "Apache Kafka $(KAFKA_VERSION) (KRaft, one node, scripts/testbrokers.py)"; \
	exit $$rc
endef

chaos: install-test
	$(call chaos_run,chaos,$(SOAK_S),1000,chaos)

# `make soak`: 20 minutes at 1,000 events/s; the first 10 warm up (the dedupe window fills in 5,
# chDB's caches and the allocators settle in about 8), the last 10 are judged.
soak: export FLYBALL_SOAK_WARMUP_S := 600
soak: install-test
	$(call chaos_run,chaos/test_soak.py,1200,1000,soak)
