# Everything runs from the virtual environment in .venv, made on first use. `make serve`
# installs the server set only (flatscope[server]: TensorFlow, Keras' default backend);
# `make test` and the tools add the dev set (every backend, the reference clients, linters).
VENV := .venv
BIN := $(VENV)/bin
SERVER_STAMP := $(VENV)/.installed-server
STAMP := $(VENV)/.installed-dev
PYTHON ?= python3

.PHONY: setup serve test lint protos train dashboard picture

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(SERVER_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --progress-bar on -e '.[server]'
	touch $(SERVER_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --progress-bar on -e '.[dev]'
	touch $(STAMP) $(SERVER_STAMP)

setup: $(STAMP)  ## create .venv with the server and the test tools

# make serve PORT=8600 HOST=0.0.0.0 ARGS="--model my_model.keras": what flatscope serve is
# told; unset, its own defaults (127.0.0.1:8500, or FLATSCOPE_* variables) hold. PORT and
# HOST count only from make's command line: a shell's own HOST (zsh sets it) is no address.
given = $(if $(filter command line,$(origin $(1))),--$(2) $($(1)))
serve: $(SERVER_STAMP)  ## start the server on the embedded default model (gRPC 127.0.0.1:8500, HTTP :8501)
	$(BIN)/flatscope serve $(call given,HOST,host) $(call given,PORT,port) $(ARGS)

# The whole suite on TensorFlow (Keras' default backend), then the layout and
# prediction suites again on JAX, so that both compiled paths stay honest.
JAX_TESTS := tests/test_layout.py tests/grpc/test_inspect.py tests/grpc/test_predict.py \
	tests/grpc/test_concurrency.py

test: $(STAMP)  ## run the test suite
	bash .ci/install-perf-analyzer  # Triton's perf_analyzer into .venv/bin (once)
	$(BIN)/python -m pytest
	KERAS_BACKEND=jax $(BIN)/python -m pytest $(JAX_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check service tests bench deploy
	$(BIN)/ruff format --check service tests bench deploy

protos: $(STAMP)  ## regenerate service/flatscope/v1 and flatscope/protocols from protos/
	$(BIN)/python protos/generate.py

dashboard: $(STAMP)  ## regenerate deploy/grafana/dashboards/flatscope.json
	$(BIN)/python deploy/grafana/dashboard.py

train: $(STAMP)  ## retrain the embedded default model
	$(BIN)/python -m flatscope.default_model.train

picture: $(STAMP)  ## redraw docs/inspect.png: the embedded model inspecting examples/seven.png
	$(BIN)/python docs/picture.py
