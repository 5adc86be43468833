# Model server without TensorFlow Serving's image: our TF-Serving-compatible
# `kitchenware model-server` (the same gRPC and REST APIs, ports, environment,
# batching file and warm-up records) running the export's OpenVINO IR, with no
# TensorFlow installed. Several times TF's throughput on a CPU with AVX-512 BF16 or
# AMX, a fraction of the size (docu/deploy.md: which model image when).
# tensorflow/serving publishes no arm64 image; OpenVINO has aarch64 wheels, so this
# image also builds for Apple-silicon laptops.
#
#   docker build -f image-model-python.dockerfile --build-arg MODEL_VERSION=1 -t kitchenware-model:1 .
#   (or: MODEL_DOCKERFILE=image-model-python.dockerfile docker-compose up --build)
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- build stage: OpenVINO, the TF Serving protos and the serving tiers of our package ----
FROM ${PYTHON_IMAGE} AS build
# Same pin as TFS_API in the Makefile.
ARG TFS_API=tensorflow-serving-api==2.21.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements/model-server.txt requirements/model-server.txt
# openvino-telemetry goes: without it OpenVINO uses its no-op stub (nothing phones home).
# DL3013: TFS_API is pinned (==), hadolint cannot see through the build ARG.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir -r requirements/model-server.txt \
    && pip install --no-cache-dir --no-deps "${TFS_API}" \
    && pip uninstall --yes openvino-telemetry
# The error-code protos tensorflow-protobuf lacks (GetModelStatus needs them).
COPY serving/protos serving/protos
COPY scripts/tf_free_protos.sh scripts/tf_free_protos.sh
RUN PYTHON=python scripts/tf_free_protos.sh /opt/venv/lib/python3.11/site-packages
COPY pyproject.toml README.md ./
# The tiers `kitchenware model-server` imports (pyproject's import contract).
COPY kitchenware/__init__.py kitchenware/cli.py kitchenware/
COPY kitchenware/core kitchenware/core
COPY kitchenware/serving kitchenware/serving
COPY kitchenware/model_server kitchenware/model_server
RUN pip install --no-cache-dir --no-deps .
# A CPU server runs an IR on the CPU plugin: no GPU/NPU/AUTO/HETERO/batch plugins, no
# model-format frontends but IR's, no converter (openvino/tools; `import openvino`
# skips it when absent), no C API, no C headers, type stubs, NumPy's f2py, distutils
# and typing helpers, installers or test suites.
ARG SITE=/opt/venv/lib/python3.11/site-packages
ARG OVLIBS=${SITE}/openvino/libs
RUN pip uninstall --yes pip setuptools \
    && rm -f ${OVLIBS}/libopenvino_intel_gpu_plugin.so ${OVLIBS}/libopenvino_intel_npu_plugin.so \
       ${OVLIBS}/libopenvino_auto_plugin.so ${OVLIBS}/libopenvino_auto_batch_plugin.so \
       ${OVLIBS}/libopenvino_hetero_plugin.so ${OVLIBS}/cache.json ${OVLIBS}/libopenvino_c.so.* \
    && find ${OVLIBS} -name 'libopenvino_*_frontend.so.*' ! -name 'libopenvino_ir_frontend.so.*' -delete \
    && rm -rf ${SITE}/openvino/include ${SITE}/openvino/cmake ${SITE}/openvino/tools \
       ${SITE}/openvino/torch ${SITE}/numpy/f2py ${SITE}/numpy/typing ${SITE}/numpy/_core/include \
       ${SITE}/numpy/distutils \
       ${SITE}/openvino/frontend/tensorflow ${SITE}/openvino/frontend/tflite \
       ${SITE}/openvino/frontend/onnx ${SITE}/openvino/frontend/pytorch \
       ${SITE}/openvino/frontend/paddle ${SITE}/openvino/frontend/jax \
    && find /opt/venv \( -name '*.pyi' -o -name '*.h' \) -delete \
    && find /opt/venv -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
# The model version without variables/: the IR holds the weights; saved_model.pb
# (the signatures GetModelMetadata answers) and the warm-up records stay.
ARG MODEL_DIR=models/kitchenware
ARG MODEL_VERSION=1
COPY ${MODEL_DIR}/${MODEL_VERSION} /models/kitchenware/${MODEL_VERSION}
RUN test -f /models/kitchenware/${MODEL_VERSION}/openvino/manifest.json \
       || { echo "version ${MODEL_VERSION} has no OpenVINO IR: export it again" >&2; exit 1; } \
    && rm -rf /models/kitchenware/${MODEL_VERSION}/variables

# ---- runtime stage: the venv, the model and the healthcheck ----
FROM ${PYTHON_IMAGE}
# The export to bake in: MODEL_DIR/MODEL_VERSION (what `kitchenware export` wrote).
ARG MODEL_DIR=models/kitchenware
ARG MODEL_VERSION=1
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin serving
COPY --from=build /opt/venv /opt/venv
# MODEL_BACKEND: the model server's --backend; this image has OpenVINO only.
# TF Serving's image contract: the model in ${MODEL_BASE_PATH}/${MODEL_NAME}/<version>/.
# HOME on /tmp: the root filesystem is read-only in compose and Kubernetes.
ENV MODEL_NAME=kitchenware \
    MODEL_BASE_PATH=/models \
    REST_PORT=8501 \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODEL_BACKEND=openvino
COPY --from=build /models/kitchenware/${MODEL_VERSION} /models/kitchenware/${MODEL_VERSION}
COPY serving/batching_parameters.txt /etc/kitchenware/batching_parameters.txt
# The same check as the TF Serving image (its file mode, 0755, comes from git).
COPY serving/model-healthcheck.sh /usr/local/bin/model-healthcheck
USER 10001
# 8500: gRPC (PredictionService, ModelService, grpc.health.v1). 8501: REST (status, :predict).
EXPOSE 8500 8501
HEALTHCHECK --interval=10s --timeout=8s --start-period=90s --retries=3 \
    CMD ["/usr/local/bin/model-healthcheck"]
# Like TF Serving's entrypoint, CMD appended: the server itself reads MODEL_NAME,
# MODEL_BASE_PATH (versions in $MODEL_BASE_PATH/$MODEL_NAME), REST_PORT and MODEL_BACKEND,
# and stops with a message naming the variable when one holds a bad value.
# Warm-up from assets.extra/tf_serving_warmup_requests always runs in this server.
ENTRYPOINT ["kitchenware", "model-server", "--host", "0.0.0.0", "--port", "8500"]
CMD ["--enable_batching", \
     "--batching_parameters_file=/etc/kitchenware/batching_parameters.txt"]
