# Tracekit — every target is a thin call into tools/ (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
# The package installed (editable) in the venv, with every dependency; remade when the lists change, so any
# target works as the first command on a fresh machine.
READY := $(VENV)/.tracekit-ready
RUN_ID ?= $(shell sed -n 's/^\(export \)\{0,1\}RUN_ID=//p' run_id.env 2>/dev/null | tr -d "'\"")
export RUN_ID
# `make test` runs everything; TEST_ARGS passes extra pytest flags (e.g. TEST_ARGS='-k fifo').
TEST_ARGS ?=

.PHONY: help setup deps test test-fast lint status start-collect stop-collect parse export replay perfetto compare \
        demo chaos bench clean-run stop-node export-opendc clean stop build run load baseline \
        real-all real-json real-gzip real-hash real-kvset real-kvget loadgen stop-service container-images

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

deps: ## Debian packages ffmpeg, redis-server, sysstat, iproute2 when missing (needs root)
	@missing=""; for b in ffmpeg:ffmpeg redis-server:redis-server pidstat:sysstat ip:iproute2; do \
	  command -v $${b%%:*} >/dev/null || missing="$$missing $${b#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else echo "missing Debian packages:$$missing (run: sudo apt-get install -y$$missing)"; exit 2; fi; fi

setup: deps ## .venv with the tracekit package (editable) and its dependencies (+ Debian packages as root)
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(READY)
	@echo "setup done: $(VENV) ready (tracekit-* commands in $(VENV)/bin)"

$(READY): pyproject.toml requirements.txt requirements-dev.txt
	@$(MAKE) --no-print-directory setup

container-images: ## podman images from Debian's archive for the container tests (cached; needs podman, debootstrap)
	bash tools/build_container_image.sh ffmpeg
	bash tools/build_container_image.sh systemd

test: $(READY) ## the whole test suite (real redis-server, ffmpeg, /proc); sets itself up on a fresh machine
	$(PY) -m pytest -q $(TEST_ARGS)

test-fast: $(READY) ## pure-logic tests only (no Redis, ffmpeg or cluster): seconds
	$(PY) -m pytest -q -m "not system" $(TEST_ARGS)

lint: $(READY) ## ruff
	$(PY) -m ruff check tools tests bench

status: $(READY) ## control-plane status (nodes, queues, head task); WATCH=1 refreshes
	$(PY) tools/scheduler/status.py $(if $(WATCH),--watch,)

start-collect: $(READY) ## start this node's collector for RUN_ID (env: PROC_PID_DIR, PROC_INTERVAL_MS, NODE_ID, ...)
	$(PY) tools/collect_sys.py start

stop-collect: $(READY) ## stop this node's collector for RUN_ID (STOP_ALL=1: every collector of the run)
	$(PY) tools/collect_sys.py stop

parse: $(READY) ## raw logs of RUN_ID -> logs/RUN_ID/CTS (+ audit_report.md and plots)
	$(PY) tools/parse_cts.py --run-id "$(RUN_ID)" $(if $(STRICT),--strict,)

# The replay check follows every export; its failure (e.g. an experiment it cannot read) does not undo the export.
export: $(READY) ## CTS of RUN_ID -> logs/RUN_ID/opendc (OpenDC parquet + topology/experiment JSON) + replay check
	$(PY) tools/export_opendc.py --input "logs/$(RUN_ID)" --output "logs/$(RUN_ID)/opendc"
	-$(PY) tools/replay_opendc.py --input "logs/$(RUN_ID)/opendc"

replay: $(READY) ## replay logs/RUN_ID/opendc under OpenDC's rules -> opendc-replay/ + a verdict in audit_report.md
	$(PY) tools/replay_opendc.py --input "logs/$(RUN_ID)/opendc" $(if $(STRICT),--strict,)

perfetto: $(READY) ## CTS of RUN_ID -> logs/RUN_ID/timeline.json (open in ui.perfetto.dev)
	$(PY) tools/export_perfetto.py --input "logs/$(RUN_ID)" --output "logs/$(RUN_ID)/timeline.json"

compare: $(READY) ## OpenDC result in OPENDC_OUT vs RUN_ID's CTS -> PASS/FAIL report + plots (STRICT=1: exit 1 on FAIL)
	@test -n "$(OPENDC_OUT)" || { echo "usage: make compare OPENDC_OUT=<OpenDC output folder> [RUN_ID=...]"; exit 2; }
	$(PY) tools/compare_opendc.py --opendc "$(OPENDC_OUT)" --input "logs/$(RUN_ID)" $(if $(STRICT),--strict,)

# demo and chaos first make sure the machine has everything (setup is idempotent and quick when nothing is
# missing): on a fresh machine the system python has none of the packages.
demo: setup ## whole pipeline on an emulated cluster (NODES, TOTAL, MIX, SEED, WEIGHER, BINDING, RATIO, SCENARIO)
	$(PY) tools/demo.py

# Service tasks (docs/services.md): drive one with the load generator, or stop it.
loadgen: $(READY) ## drive service SERVICE=<trace_id>: RATE=100 (open loop) or CONCURRENCY=N, DURATION=10, REQ_MIX=file
	@test -n "$(SERVICE)" || { echo "usage: make loadgen SERVICE=<trace_id> [RATE=100|CONCURRENCY=N] [DURATION=10] [REQ_MIX=file]"; exit 2; }
	$(PY) tools/loadgen.py --service "$(SERVICE)" --run-id "$(RUN_ID)" \
	  $(if $(CONCURRENCY),--concurrency $(CONCURRENCY),--rate $(or $(RATE),100)) --duration $(or $(DURATION),10) \
	  $(if $(REQ_MIX),--mix "$(REQ_MIX)",) $(if $(STOP_AFTER),--stop-after,)

stop-service: $(READY) ## stop service SERVICE=<trace_id> (SIGTERM, then SIGKILL after its grace)
	@test -n "$(SERVICE)" || { echo "usage: make stop-service SERVICE=<trace_id>"; exit 2; }
	$(PY) tools/scheduler/admin.py stop-service "$(SERVICE)"

chaos: setup ## fault-injection run: kills workers/scheduler/redis, cuts a node off, checks nothing is lost
	$(PY) tools/chaos.py

bench: setup ## every benchmark under bench/, one table of ratios against baselines
	$(PY) bench/run_all.py

clean-run: $(READY) ## delete RUN_ID's Redis keys (queues, capacity, registry) for a fresh run
	$(PY) tools/scheduler/admin.py clean

stop-node: $(READY) ## stop this node's worker and collector for RUN_ID
	$(PY) tools/scheduler/admin.py stop-node

# logs/RUN_ID as the toolkit resolves it ($TRACEKIT_LOGS); a bad or empty RUN_ID prints nothing (and an error).
RUN_DIR_OF = $(PY) -c 'import sys; from tracekit.core import paths; print(paths.run_dir(paths.check_id("RUN_ID", sys.argv[1])))'
# The original Tracekit's targets (docs/migrating.md, "Make targets"). `clean` finds the processes by their
# pidfiles (stop-node), never by name, and refuses to run without a RUN_ID (it would delete logs/).
export-opendc: $(READY) ## the original's target: CTS of RUN_ID -> opendc_traces/ (OUT=dir to change; see `export`)
	$(PY) tools/export_opendc.py --input "$$($(RUN_DIR_OF) "$(RUN_ID)")" --output "$(or $(OUT),opendc_traces)"
	@echo "OpenDC traces exported to $(or $(OUT),opendc_traces)/"

clean: $(READY) ## the original's target: stop-node, then delete logs/RUN_ID (Redis keys: make clean-run)
	@test -n "$(RUN_ID)" || { echo "make clean: no RUN_ID (RUN_ID=... or run_id.env): nothing deleted"; exit 2; }
	$(PY) tools/scheduler/admin.py stop-node
	rm -rf -- "$$($(RUN_DIR_OF) "$(RUN_ID)")"

stop: stop-node ## the original's target (container + collector): now stop-node

# Targets of the original that have no counterpart: one line naming what to use.
build:
	@echo "make build: removed (the original built no app either): use make setup" >&2; exit 2
run:
	@echo "make run: removed (the original's docker example service): use make demo" >&2; exit 2
load:
	@echo "make load: removed (deprecated in the original): enqueue tasks with tools/scheduler/dispatcher.py" >&2; exit 2
baseline:
	@echo "make baseline: removed: use make demo (setup, workers, collectors, dispatch, parse, export)" >&2; exit 2
real-all real-json real-gzip real-hash real-kvset real-kvget:
	@echo "make $@: removed (deprecated in the original): use make demo" >&2; exit 2
