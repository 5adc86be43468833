# HTTP gateway: Flask under gunicorn, talking gRPC to the model server.
# No TensorFlow: only requirements/gateway.txt (the TF protos come from
# tensorflow-protobuf) plus tensorflow-serving-api installed with --no-deps,
# because its declared dependency would pull all of TensorFlow (~1.5 GB).
#
#   docker build -f image-gateway.dockerfile -t kitchenware-gateway:1 .   (or: make images)
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- build stage: a virtual environment with the pinned gateway tier ----
FROM ${PYTHON_IMAGE} AS build
# Same pin as TFS_API in the Makefile.
ARG TFS_API=tensorflow-serving-api==2.21.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements/gateway.txt requirements/gateway.txt
# DL3013: TFS_API is pinned (==), hadolint cannot see through the build ARG.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir -r requirements/gateway.txt \
    && pip install --no-cache-dir --no-deps "${TFS_API}"
COPY pyproject.toml README.md ./
# Only the TensorFlow-free tiers (pyproject's import contract names them).
COPY kitchenware/__init__.py kitchenware/__init__.py
COPY kitchenware/core kitchenware/core
COPY kitchenware/serving kitchenware/serving
COPY kitchenware/gateway kitchenware/gateway
RUN pip install --no-cache-dir --no-deps .
# The runtime needs neither the installers nor the libraries' own test suites:
# 156 -> 114 MB of venv (measured on the same pinned set), so that with the
# ~130 MB slim base the image stays near the 250 MB goal.
RUN pip uninstall --yes pip setuptools \
    && find /opt/venv -depth -type d -name tests -exec rm -rf {} +

# ---- runtime stage: the venv and the two entry files, nothing else ----
FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY gateway.py gunicorn.conf.py ./
# PROMETHEUS_MULTIPROC_DIR lives under /tmp, the one writable place (Kubernetes
# mounts an emptyDir there and keeps the root filesystem read-only).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=9696 \
    TF_SERVING_HOST=localhost:8500 \
    MODEL_NAME=kitchenware \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus-multiproc
USER 10001
EXPOSE 9696
# python:slim has no curl; the standard library does the request.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '9696'), timeout=4)"]
CMD ["gunicorn", "gateway:app", "-c", "gunicorn.conf.py"]
