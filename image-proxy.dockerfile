# The gateway's reverse proxy: the official nginx image with proxy/ (config template,
# JSON error pages, the entrypoint that renders the template from the environment)
# and the web page's static files.
# Runs as an unprivileged user on ports above 1024 and writes only to PROXY_RUN_DIR,
# so it works with a read-only root filesystem and a /tmp volume.
#
#   docker build -f image-proxy.dockerfile -t kitchenware-proxy:1 .   (or: make images)
ARG NGINX_IMAGE=nginx:1.28.0-bookworm
FROM ${NGINX_IMAGE}
COPY proxy/nginx.conf.template proxy/json-errors.conf proxy/page.conf /etc/kitchenware-proxy/
# The web page, served by the proxy itself (the same files the gateway package ships).
COPY kitchenware/gateway/static /usr/share/kitchenware-page/static
COPY proxy/render.sh /usr/local/bin/kitchenware-proxy
# Defaults of the deployments; the gateway's address, MAX_REQUEST_BYTES and
# PROXY_UPSTREAM_CONNS come from compose or the pod spec (they depend on the gateway's).
ENV PROXY_RUN_DIR=/tmp/nginx \
    PROXY_PORT=9696 \
    PROXY_PROBE_PORT=9697 \
    PROXY_HEADER_TIMEOUT=10 \
    PROXY_BODY_TIMEOUT=30 \
    PROXY_PAGE_ROOT=/usr/share/kitchenware-page
USER 10001:10001
EXPOSE 9696 9697
ENTRYPOINT ["/usr/local/bin/kitchenware-proxy"]
