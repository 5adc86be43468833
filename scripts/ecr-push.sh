#!/usr/bin/env bash
# `make ecr-push` (COSTS MONEY: see docu/deploy.md): create the ECR repositories if
# missing, log Docker in, tag and push each image.
#   scripts/ecr-push.sh REGION REGISTRY TAG IMAGE ...
set -euo pipefail
region=$1 registry=$2 tag=$3
shift 3
for repo in "$@"; do
  aws ecr describe-repositories --region "$region" --repository-names "$repo" >/dev/null 2>&1 \
    || aws ecr create-repository --region "$region" --repository-name "$repo" >/dev/null
done
aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry"
for image in "$@"; do
  docker tag "$image:$tag" "$registry/$image:$tag"
  docker push "$registry/$image:$tag"
done
