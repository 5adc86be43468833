#!/usr/bin/env bash
# Install the Debian package of each COMMAND that is not on PATH (root only).
#   scripts/debian-deps.sh [--strict] [--no-recommends] COMMAND:PACKAGE ...
# Not root: --strict stops with an error; otherwise it says what is missing and the
# tests that need it skip.
set -euo pipefail
strict=0 apt_options=()
while [ "${1:-}" != "" ] && [ "${1#--}" != "$1" ]; do
  case $1 in
    --strict) strict=1 ;;
    --no-recommends) apt_options+=(--no-install-recommends) ;;
    *) echo "$0: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
# nginx and other daemons live in /usr/sbin, which a non-login PATH may lack.
PATH="$PATH:/usr/sbin"
missing=()
for pair in "$@"; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair##*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  if [ $strict = 1 ]; then
    echo "missing Debian packages: ${missing[*]}; install them as root (apt-get install)" >&2
    exit 1
  fi
  echo "not root: install ${missing[*]} yourself, or the tests that need them skip"
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_options[@]}" "${missing[@]}" >/dev/null
