#!/bin/sh
# Installs Debian's chromium for the console's browser tests (tests/browser/) when it is missing.
# Exit 0: /usr/bin/chromium is there. Exit 3: it is not and could not be installed (outside CI the
# caller says loudly that the browser suite did not run; with CI=true the caller fails the run).
CHROMIUM="${FLYBALL_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then exit 0; fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "installing chromium with apt-get (the console's browser tests need it) ..."
    apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1
fi
if [ -x "$CHROMIUM" ]; then exit 0; fi
echo "chromium is missing at $CHROMIUM and could not be installed (needs apt-get as root)" >&2
exit 3
