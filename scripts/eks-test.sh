#!/usr/bin/env bash
# `make eks-test`: wait for the gateway's load balancer, then classify the smoke photos.
#   scripts/eks-test.sh NAMESPACE PYTHON PHOTO ...
set -euo pipefail
namespace=$1 py=$2
shift 2
host=$(kubectl -n "$namespace" get service gateway -o jsonpath='{.status.loadBalancer.ingress[0].hostname}')
if [ -z "$host" ]; then
  echo "make eks-test: the gateway Service has no load balancer address yet (kubectl -n $namespace get service gateway)" >&2
  exit 1
fi
"$py" -m devtools.wait_ready "http://$host" --timeout 600
"$py" test.py --gateway "http://$host" "$@"
