# Model server: the official TensorFlow Serving image with the exported
# Kitchenware SavedModel baked in (one immutable image per model version).
#
#   kitchenware export --model runs/latest/best.keras --out models/kitchenware --version 1
#   docker build -f image-model.dockerfile --build-arg MODEL_VERSION=1 -t kitchenware-model:1 .
#   (or: make images MODEL_VERSION=1)
# The one place the serving TensorFlow version is written: `make skew-check`
# (devtools.skew, run by the tests) loads every export with this
# TensorFlow version, because TF does not promise old runtimes read new exports.
ARG TF_SERVING_VERSION=2.19.0
FROM tensorflow/serving:${TF_SERVING_VERSION}

# The export to bake in: MODEL_DIR/MODEL_VERSION (what `kitchenware export` wrote).
ARG MODEL_DIR=models/kitchenware
ARG MODEL_VERSION=1

# The base image's entrypoint runs
#   tensorflow_model_server --port=8500 --rest_api_port=8501 \
#     --model_name=${MODEL_NAME} --model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME} "$@"
# so the model must sit in /models/kitchenware/<version>/ and MODEL_NAME must be
# the name the gateway asks for (kitchenware.core.contract.MODEL_NAME).
ENV MODEL_NAME=kitchenware \
    MODEL_BASE_PATH=/models \
    REST_PORT=8501

COPY ${MODEL_DIR}/${MODEL_VERSION} /models/kitchenware/${MODEL_VERSION}
COPY serving/batching_parameters.txt /etc/kitchenware/batching_parameters.txt
# TF Serving's image has bash but no curl: the check talks HTTP through /dev/tcp.
# Its file mode (0755) comes from git: Docker 20.10's builder has no COPY --chmod.
COPY serving/model-healthcheck.sh /usr/local/bin/model-healthcheck

# Nothing here needs root: serve as an unprivileged user (Kubernetes also
# enforces runAsNonRoot with this uid).
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin serving
USER 10001

# 8500: gRPC (PredictionService; the gateway's TF_SERVING_HOST). 8501: REST (status, healthcheck).
EXPOSE 8500 8501

# Healthy only once a version of the model is AVAILABLE (loaded and warmed up);
# the REST status page alone answers 200 while the model is still loading.
HEALTHCHECK --interval=10s --timeout=8s --start-period=90s --retries=3 \
    CMD ["/usr/local/bin/model-healthcheck"]

# Appended to the entrypoint's command line:
# - server-side batching with the parameters kept in serving/;
# - warm-up from assets.extra/tf_serving_warmup_requests (written by
#   `kitchenware export`; TF Serving's default, made explicit here);
# - connections recycled every minute, so gRPC clients that balance over a
#   headless Service re-resolve DNS and find new replicas.
CMD ["--enable_batching=true", \
     "--batching_parameters_file=/etc/kitchenware/batching_parameters.txt", \
     "--enable_model_warmup=true", \
     "--grpc_channel_arguments=grpc.max_connection_age_ms=60000"]
