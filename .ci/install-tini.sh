#!/usr/bin/env bash
# Debian's tini, the image's init, for reporting_pipeline_tests/test_termination.py (it runs the dagster
# commands under /usr/bin/tini as the image does); does nothing when it is there.
set -euo pipefail
if [ -x /usr/bin/tini ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
install() { $SUDO apt-get install -y -q --no-install-recommends tini; }
# Package lists are fetched only when they do not know the package yet, or are too stale to install from.
if ! apt-cache show tini >/dev/null 2>&1; then
  $SUDO apt-get update -q
  install
elif ! install; then
  $SUDO apt-get update -q
  install
fi
dpkg-query -W tini
