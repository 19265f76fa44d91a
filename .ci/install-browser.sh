#!/usr/bin/env bash
# Debian's Chromium and chromedriver for reporting_pipeline_tests/test_dev_stack.py (the UI test); does nothing when both are there.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
install() { $SUDO apt-get install -y -q chromium chromium-driver; }
# Package lists are fetched only when they do not know the packages yet, or are too stale to install from.
if ! apt-cache show chromium chromium-driver >/dev/null 2>&1; then
  $SUDO apt-get update -q
  install
elif ! install; then
  $SUDO apt-get update -q
  install
fi
dpkg-query -W chromium chromium-driver
