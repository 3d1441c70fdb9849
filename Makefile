# Everything runs from the virtual environment in .venv, made on first use.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: setup serve test lint protos train dashboard

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the server and the test tools

serve: $(STAMP)  ## start the server on the embedded default model (gRPC 127.0.0.1:8500, HTTP :8501)
	$(BIN)/flatscope serve

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

protos: $(STAMP)  ## regenerate service/flatscope/v1 from protos/
	$(BIN)/python protos/generate.py

dashboard: $(STAMP)  ## regenerate deploy/grafana/dashboards/flatscope.json
	$(BIN)/python deploy/grafana/dashboard.py

train: $(STAMP)  ## retrain the embedded default model
	$(BIN)/python -m flatscope.default_model.train
