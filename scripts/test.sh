#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need when it
# is missing (redis-server through apt-get), then checks formatting, lints
# and runs every test against real processes.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkg() { # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "== installing $2"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$2" >/dev/null
}

need_pkg redis-server redis-server
need_pkg haproxy haproxy   # deploy/haproxy.cfg is checked and run in front of real nodes
need_pkg nginx nginx       # deploy/nginx.conf likewise
need_pkg chromium chromium                 # tests/it/browser.rs drives headless Chromium
need_pkg chromedriver chromium-driver
need_pkg node nodejs                       # playwright-core needs Node >= 20
need_pkg npm npm
echo "== npm ci (tests/browser: playwright-core only, no browser download)"
(cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund --prefer-offline)
echo "== npm ci (clients/js: ws for the client's tests)"
(cd clients/js && npm ci --no-audit --no-fund --prefer-offline)

echo "== redis: $(redis-server --version)"
echo "== module graph (fails on an import cycle)"
python3 scripts/module-graph.py
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --all-targets "$@"
echo "== JavaScript client (clients/js), against a stand-in gateway"
(cd clients/js && node --test test/)
echo "== benchmark harness, tiny scale (proves it works; figures are meaningless here)"
./scripts/bench.sh --quick --debug --systems ssegate --source-addrs 2 > /dev/null
echo "== ssegate-bench's WebSocket modes against the Socket.IO and ws peers (debug build, from bench.sh)"
./bench/peers/test.sh
