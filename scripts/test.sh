#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need when it
# is missing (redis-server through apt-get), then checks formatting, lints
# and runs every test against real processes, then fuzzes the parsers of
# untrusted bytes briefly (cargo-afl through cargo install).
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

echo "== redis: $(redis-server --version)"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --all-targets "$@"
echo "== fuzzing: every parser of untrusted bytes, 20 s each (docs/fuzzing.md)"
need_pkg make make   # cargo-afl builds its own AFL++ from source
need_pkg cc gcc
command -v cargo-afl >/dev/null 2>&1 || cargo install --locked cargo-afl
./scripts/fuzz.sh 20s
echo "== benchmark harness, tiny scale (proves it works; figures are meaningless here)"
./scripts/bench.sh --quick --debug --systems ssegate --source-addrs 2 > /dev/null
