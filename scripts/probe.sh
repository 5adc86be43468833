#!/bin/sh
# `make probe`: replay the hostile cases against real processes, inside a network
# namespace that holds only loopback (root: unshare -n), so nothing can leave the
# machine whatever the code under test does. Every gateway here is the deployed pair,
# nginx (proxy/nginx.conf.template) in front of gunicorn, started by devtools.stack;
# the protocol suite also replays its transfer-coding cases against gunicorn alone.
# Each case prints its figures; pytest's summary lists every case with its outcome.
set -eu
PY=${PY:-.venv/bin/python}
if [ "${KITCHENWARE_PROBE_NETNS:-}" != 1 ]; then
    exec unshare -n env KITCHENWARE_PROBE_NETNS=1 sh -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi
run() { "$PY" -m pytest -s -q -rA -p no:cacheprovider "$@"; }
status=0
# Decompression bombs under the gateway's memory limit (cgroup).
run tests/integration/test_gateway_memory.py || status=1
# Trickling URLs, metadata and private addresses, port 0; hostile redirects (unusable or
# refused Locations: 502, a fuzz of Location values) and every IPv6 spelling of an IPv4
# address (issue 21).
run tests/unit/test_gateway_fetch.py -k "trickling or slow_download or cloud or private or port_zero or redirect or spelling" || status=1
# /predict on a URL whose server redirects to an unparsable Location: a JSON 502 (issue 21).
run tests/unit/test_gateway_predict.py -k "unparsable_location" || status=1
# Huge or empty gRPC shapes, echoed metadata.
run tests/integration/test_model_server.py -k "predict_error_codes or echoed" || status=1
# Malformed chunked bodies and protocol errors: JSON answers; transfer codings the
# gateway does not implement (gzip, chunked): 501, through the proxy and gunicorn alone.
run tests/integration/test_gateway_protocol.py || status=1
# Health under load, load shedding, slow loris (headers and bodies).
run tests/integration/test_gateway_starvation.py || status=1
# The hostile replay of 2026-12-06: Expect without body, big trickled heads, idle
# connections, probe floods, refusals in the proxy's log.
run tests/integration/test_gateway_hostile.py || status=1
# The batching worst case under the model server's memory limit.
run tests/integration/test_model_server_memory.py || status=1
exit $status
