#!/usr/bin/env bash
# Debian's Noto fonts (report rendering in every script) and poppler-utils (pdftotext, pdffonts,
# pdftoppm for reporting_pipeline_tests/test_render_scripts.py); does nothing when all are there.
set -euo pipefail
PACKAGES=(fonts-noto-core fonts-noto-cjk poppler-utils)
installed=$(dpkg-query -W -f='${Status}\n' "${PACKAGES[@]}" 2>/dev/null | grep -c "install ok installed" || true)
if [ "$installed" -ne "${#PACKAGES[@]}" ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  install() { $SUDO apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"; }
  # Package lists are fetched only when they do not know the packages yet, or are too stale to install from.
  if ! apt-cache show "${PACKAGES[@]}" >/dev/null 2>&1; then
    $SUDO apt-get update -q
    install
  elif ! install; then
    $SUDO apt-get update -q
    install
  fi
fi
dpkg-query -W "${PACKAGES[@]}"
