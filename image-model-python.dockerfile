# Model server without TensorFlow Serving's image: our TF-Serving-compatible
# `kitchenware model-server` (the same gRPC and REST APIs, ports, environment,
# batching file and warm-up records) with the exported SavedModel baked in.
# For machines where tensorflow/serving cannot run or be pulled: it publishes
# no arm64 image, so Apple-silicon laptops need this one.
#
#   docker build -f image-model-python.dockerfile --build-arg MODEL_VERSION=1 -t kitchenware-model:1 .
#   (or: MODEL_DOCKERFILE=image-model-python.dockerfile docker-compose up --build)
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- build stage: tensorflow-cpu and the serving tiers of our package ----
FROM ${PYTHON_IMAGE} AS build
# Same pin as TFS_API in the Makefile.
ARG TFS_API=tensorflow-serving-api==2.21.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements/model-server.txt requirements/model-server.txt
# DL3013: TFS_API is pinned (==), hadolint cannot see through the build ARG.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir -r requirements/model-server.txt \
    && pip install --no-cache-dir --no-deps "${TFS_API}"
COPY pyproject.toml README.md ./
# The tiers `kitchenware model-server` imports (pyproject's import contract).
COPY kitchenware/__init__.py kitchenware/cli.py kitchenware/
COPY kitchenware/core kitchenware/core
COPY kitchenware/serving kitchenware/serving
COPY kitchenware/model_server kitchenware/model_server
RUN pip install --no-cache-dir --no-deps .
# Serving needs neither installers, C headers, libclang (TensorFlow's code
# generators use it) nor the libraries' own test suites.
RUN pip uninstall --yes pip setuptools libclang \
    && rm -rf /opt/venv/lib/python3.11/site-packages/tensorflow/include \
    && find /opt/venv -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +

# ---- runtime stage: the venv, the model and the healthcheck ----
FROM ${PYTHON_IMAGE}
# The export to bake in: MODEL_DIR/MODEL_VERSION (what `kitchenware export` wrote).
ARG MODEL_DIR=models/kitchenware
ARG MODEL_VERSION=1
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin serving
COPY --from=build /opt/venv /opt/venv
# TF Serving's image contract: the model in ${MODEL_BASE_PATH}/${MODEL_NAME}/<version>/.
# HOME on /tmp: the root filesystem is read-only in compose and Kubernetes.
ENV MODEL_NAME=kitchenware \
    MODEL_BASE_PATH=/models \
    REST_PORT=8501 \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2
COPY ${MODEL_DIR}/${MODEL_VERSION} /models/kitchenware/${MODEL_VERSION}
COPY serving/batching_parameters.txt /etc/kitchenware/batching_parameters.txt
# The same check as the TF Serving image (its file mode, 0755, comes from git).
COPY serving/model-healthcheck.sh /usr/local/bin/model-healthcheck
USER 10001
# 8500: gRPC (PredictionService, ModelService, grpc.health.v1). 8501: REST (status, :predict).
EXPOSE 8500 8501
HEALTHCHECK --interval=10s --timeout=8s --start-period=90s --retries=3 \
    CMD ["/usr/local/bin/model-healthcheck"]
# Like TF Serving's entrypoint, CMD appended: the server itself reads MODEL_NAME,
# MODEL_BASE_PATH (versions in $MODEL_BASE_PATH/$MODEL_NAME) and REST_PORT, and stops
# with a message naming the variable when one holds a bad value.
# Warm-up from assets.extra/tf_serving_warmup_requests always runs in this server.
ENTRYPOINT ["kitchenware", "model-server", "--host", "0.0.0.0", "--port", "8500"]
CMD ["--enable_batching", \
     "--batching_parameters_file=/etc/kitchenware/batching_parameters.txt"]
