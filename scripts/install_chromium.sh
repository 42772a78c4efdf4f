#!/usr/bin/env bash
# Installs Debian's `chromium` when it is missing: tests/analysis/test_viewer.py renders the
# EchoClip page in headless Chromium. Needs apt-get and root (or sudo); otherwise it says what to
# run and leaves the test to fail with the same instruction.
set -euo pipefail
for name in chromium chromium-browser google-chrome; do
  command -v "$name" >/dev/null 2>&1 && exit 0
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium: no apt-get here; install Chromium with your package manager" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo"
  else
    echo "install_chromium: run 'sudo apt-get update && sudo apt-get install -y chromium'" >&2
    exit 0
  fi
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
