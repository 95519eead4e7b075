#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need when it
# is missing (redis-server, haproxy, podman, ... through apt-get), then
# checks formatting, lints and runs every test against real processes, then
# fuzzes the parsers of untrusted bytes briefly (cargo-afl through cargo
# install). Under CI=true a test whose program is missing fails rather than
# skips.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkg() { # command package
  type -P "$1" >/dev/null && return 0   # a program on PATH, not a shell builtin
  echo "== installing $2"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$2" >/dev/null
}

need_pkg redis-server redis-server
need_pkg haproxy haproxy   # deploy/haproxy.cfg is checked and run in front of real nodes
need_pkg nginx nginx       # deploy/nginx.conf likewise
need_pkg chromium chromium                 # tests/it/browser/ drives headless Chromium
need_pkg chromedriver chromium-driver
need_pkg node nodejs                       # playwright-core needs Node >= 20
need_pkg npm npm
need_pkg openssl openssl                   # test certificates (rediss://, HTTPS)
need_pkg ip iproute2                       # tests/it/netfault.rs: a network namespace and a veth pair
need_pkg iptables iptables                 # tests/it/netfault.rs (a client that stops acknowledging); podman's port publishing
need_pkg curl curl                         # tests/it/netfault.rs: a stream read inside the namespace
need_pkg kill procps                       # tests/it/netfault.rs: a client that stops reading (SIGSTOP)
# tests/it/container.rs builds the image with podman and runs it (rootful).
# runc, because crun refuses hosts with cgroup v1 hierarchies plus a
# controller on the v2 one. The rootless helpers (uidmap, slirp4netns,
# fuse-overlayfs) are not needed.
need_pkg podman podman
need_pkg runc runc
# tests/it/sources/: the event backbones, started per test on free ports.
need_pkg nats-server nats-server           # NATS with JetStream
need_pkg rabbitmq-server rabbitmq-server   # RabbitMQ (its own node name, ports and data per test)
need_pkg make make                         # rdkafka builds librdkafka from its bundled sources
need_pkg cc gcc
need_pkg g++ g++
# Kafka: Debian has no broker; tansu (crates.io, Apache-2.0) speaks the
# Kafka protocol, with its SQLite storage so that a restart keeps the log.
if ! type -P tansu >/dev/null; then
  echo "== installing tansu (cargo install)"
  cargo install --locked tansu --features libsql
fi
echo "== npm ci (tests/browser: playwright-core only, no browser download)"
(cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund --prefer-offline)
echo "== npm ci (clients/js: ws for the client's tests)"
(cd clients/js && npm ci --no-audit --no-fund --prefer-offline)
echo "== npm ci (tests/ws-client: ws for the scripts tests/it/websocket/ runs against real nodes)"
(cd tests/ws-client && npm ci --no-audit --no-fund --prefer-offline)

echo "== redis: $(redis-server --version)"
echo "== module graph (fails on an import cycle)"
python3 scripts/module-graph.py
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test (all but the event sources)"
cargo test --workspace --all-targets "$@" -- --skip sources::
# The event-source runs kill nodes and restart real backbones while 10,000
# messages flow; their rebalances and reconnects are timed by the backbones'
# clients, so they run after the rest rather than beside 170 other tests.
echo "== cargo test (the event sources)"
cargo test --workspace --all-targets "$@" -- sources::
echo "== JavaScript client (clients/js), against a stand-in gateway"
(cd clients/js && node --test test/)
echo "== fuzzing: every parser of untrusted bytes, 20 s each (docs/fuzzing.md)"
need_pkg make make   # cargo-afl builds its own AFL++ from source
need_pkg cc gcc
command -v cargo-afl >/dev/null 2>&1 || cargo install --locked cargo-afl
./scripts/fuzz.sh 20s
echo "== benchmark harness, tiny scale (proves it works; figures are meaningless here)"
./scripts/bench.sh --quick --debug --systems ssegate --source-addrs 2 > /dev/null
echo "== the harness pinned to cores, its publisher pipelining: every event once and in order"
# At 500/s a connection's batches seldom overlap, so this proves that the
# pipelined path (a task per batch) sends and acknowledges every publish;
# overlapping batches ran in the full-size runs of docs/benchmarks.md.
rm -rf target/bench-pipeline-check
PIN_SERVER=$(( $(nproc) - 1 )) PIN_OTHERS=0 PUBLISH_PIPELINE=8 ./scripts/bench.sh --quick --debug --no-build \
  --systems ssegate --source-addrs 2 --scenarios "pub-500 fcall-500" --results target/bench-pipeline-check > /dev/null
python3 - target/bench-pipeline-check <<'PY'
import glob, json, sys
runs = sorted(glob.glob(sys.argv[1] + "/ssegate--*.json"))
assert len(runs) == 2, f"expected the pub-500 and fcall-500 results, found {runs}"
for f in runs:
    d = json.load(open(f))
    e, p = d["events"], d["publisher"]
    assert e["expected"] > 0 and (e["lost"], e["duplicated"], e["reordered"]) == (0, 0, 0), (f, e)
    assert p["errors"] == 0 and p["acknowledged"] == p["sent"] > 0, (f, p)
PY
echo "== ssegate-post-relay, the HTTP yardstick (bench.sh relay-<rate>): every publish relayed once"
# The POSTs must go to the relay, not to the node that serves the streams.
rm -rf target/bench-relay-check
./scripts/bench.sh --quick --debug --no-build --systems ssegate --source-addrs 2 --scenarios relay-500 \
  --results target/bench-relay-check > /dev/null
python3 - target/bench-relay-check <<'PY'
import glob, json, sys
runs = glob.glob(sys.argv[1] + "/ssegate--relay-500.json")
assert len(runs) == 1, f"expected the relay-500 result, found {runs}"
d = json.load(open(runs[0]))
c, e, p = d["config"], d["events"], d["publisher"]
assert c["publish"] == "http" and c["publish_to"].startswith("http://") and c["publish_to"] != c["url"], c
assert e["expected"] > 0 and (e["lost"], e["duplicated"], e["reordered"]) == (0, 0, 0), e
assert p["errors"] == 0 and p["acknowledged"] == p["sent"] > 0, p
PY
echo "== the tail log (SSEGATE_BENCH_TAIL_LOG), bench/tail_episodes.py and bench/stall_probe.py"
# With a threshold of 0 every measured delivery is logged: one line each.
rm -rf target/bench-tail-check
mkdir -p target/bench-tail-check
python3 bench/stall_probe.py target/bench-tail-check/stalls.txt 1
grep -qx "# done" target/bench-tail-check/stalls.txt
SSEGATE_BENCH_TAIL_LOG=target/bench-tail-check/tail SSEGATE_BENCH_TAIL_MIN_US=0 ./scripts/bench.sh --quick --debug \
  --no-build --systems ssegate --source-addrs 2 --scenarios pub-500 --results target/bench-tail-check > /dev/null
python3 - target/bench-tail-check <<'PY'
import glob, json, sys
d = json.load(open(glob.glob(sys.argv[1] + "/ssegate--*.json")[0]))
lines = sum(1 for f in glob.glob(sys.argv[1] + "/tail.*") for _ in open(f))
assert lines == d["events"]["delivered"] > 0, (lines, d["events"])
PY
episodes=$(python3 bench/tail_episodes.py --stalls target/bench-tail-check/stalls.txt target/bench-tail-check)
grep -q "deliveries at or over it in [1-9]" <<<"$episodes" || { echo "$episodes" >&2; exit 1; }
./scripts/bench-sources.sh --quick --debug > /dev/null
./scripts/bench-state.sh --quick --debug > /dev/null
./scripts/bench-mercure.sh --quick --debug > /dev/null
./scripts/bench-scale.sh --quick --debug > /dev/null
echo "== ssegate-bench's WebSocket modes against the Socket.IO and ws peers (debug build, from bench.sh)"
./bench/peers/test.sh
