# syntax=docker/dockerfile:1
# flatscope: the gRPC server and its embedded model in an image.
#
#   docker build -t flatscope:0.1.0-gpu .                             GPU (the default)
#   docker build --build-arg VARIANT=cpu -t flatscope:0.1.0-cpu .     CPU only, GBs smaller
#   docker run --gpus all -p 8500:8500 -p 8501:8501 -p 8502:8502 flatscope:0.1.0-gpu
#
# The install steps are the scripts in deploy/docker/, which tests/deploy/test_image_recipe.py
# also runs (into a fresh virtual environment, then starts the entry point below and asks it for
# health), so the recipe is tested without a container engine.
#
# Both variants run on the official Python image (Debian 12, Python 3.11). The gpu variant gets
# the CUDA runtime, cuDNN and cuBLAS from tensorflow[and-cuda] (TensorFlow's documented GPU
# install, versions pinned in deploy/docker/constraints.txt) rather than from a CUDA base image,
# which would be a second copy of them; the host provides only the NVIDIA driver, which the
# NVIDIA Container Toolkit mounts in (`docker run --gpus all`, or the Kubernetes device plugin).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Build stage: the wheel. The generated protobuf code is committed (service/flatscope/v1 and
# service/flatscope/protocols, checked against protos/ by the tests), so no protoc or
# grpcio-tools is needed here.
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
RUN --mount=type=bind,source=deploy/docker,target=/recipe \
    sh /recipe/build-wheel.sh /src /dist

# Runtime stage: a virtual environment in /opt/flatscope with the wheel's server set
# (flatscope[server]: TensorFlow, Keras, gRPC; no test tools, no JAX or torch).
FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=gpu
# The wheel and the recipe are bind-mounted, so neither stays in a layer.
RUN --mount=type=bind,from=build,source=/dist,target=/dist \
    --mount=type=bind,source=deploy/docker,target=/recipe \
    PIP_NO_CACHE_DIR=1 sh /recipe/install.sh /dist /opt/flatscope "${VARIANT}" \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/flatscope \
        --shell /usr/sbin/nologin flatscope

# Every setting is a FLATSCOPE_* variable (see `flatscope serve --help`); the ports here are
# also what the health check below asks. Keras writes its config under $HOME, or /tmp when
# $HOME is read-only (deploy/k8s mounts an emptyDir at /tmp).
ENV PATH=/opt/flatscope/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    FLATSCOPE_HOST=0.0.0.0 \
    FLATSCOPE_PORT=8500 \
    FLATSCOPE_HTTP_PORT=8501 \
    FLATSCOPE_METRICS_PORT=8502

USER 10001:10001
WORKDIR /home/flatscope
EXPOSE 8500 8501 8502

# grpc.health.v1: SERVING once the model is loaded and warmed up, NOT_SERVING while draining.
# Through sh, so that a FLATSCOPE_PORT given to `docker run -e` is the port asked.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["sh", "-c", "flatscope health --target 127.0.0.1:${FLATSCOPE_PORT} --timeout 4"]

# Arguments to `docker run IMAGE ...` replace CMD; FLATSCOPE_HOST keeps the address then.
ENTRYPOINT ["flatscope", "serve"]
CMD ["--host", "0.0.0.0"]
