#!/bin/sh
# Entrypoint of the proxy image: render nginx.conf.template from the environment
# into PROXY_RUN_DIR and run nginx on it in the foreground. Every variable name
# (upper case, in braces) in the template must be set; the run stops with one line naming any that is not.
# devtools/stack.py renders the same template the same way for tests.
set -eu
# PROXY_TEMPLATE_DIR: where the image puts proxy/ (tests point it at the checkout).
template_dir=${PROXY_TEMPLATE_DIR:-/etc/kitchenware-proxy}
template=$template_dir/nginx.conf.template
names=$(grep -o '\${[A-Z_][A-Z0-9_]*}' "$template" | sort -u | tr -d '${}')
missing=""
for name in $names; do
    eval "value=\${$name:-}"
    [ -n "$value" ] || missing="$missing $name"
done
if [ -n "$missing" ]; then
    echo "proxy: configuration error: set$missing" >&2
    exit 64
fi
mkdir -p "$PROXY_RUN_DIR"
envsubst "$(printf '${%s} ' $names)" <"$template" >"$PROXY_RUN_DIR/nginx.conf"
cp "$template_dir/json-errors.conf" "$template_dir/page.conf" "$PROXY_RUN_DIR/"
exec nginx -e stderr -p "$PROXY_RUN_DIR" -c "$PROXY_RUN_DIR/nginx.conf" -g 'daemon off;'
