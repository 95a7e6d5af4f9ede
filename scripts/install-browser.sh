#!/usr/bin/env bash
# Installs what the headless browser test (tests/browser) needs on Debian:
# the distribution's Chromium at /usr/bin/chromium and the test's npm packages.
# Playwright never downloads a browser of its own: the test drives /usr/bin/chromium
# (or $NEPHOS_CHROMIUM) through playwright-core, which ships no browser.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
    as_root=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            as_root=(sudo)
        else
            echo "install-browser.sh: /usr/bin/chromium is missing and this is not root (no sudo)" >&2
            exit 1
        fi
    fi
    echo "install-browser.sh: installing chromium (Debian package)" >&2
    "${as_root[@]}" apt-get update
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends chromium
fi
/usr/bin/chromium --version

cd tests/browser
# playwright-core downloads nothing at install; this also covers a switch to `playwright`.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
