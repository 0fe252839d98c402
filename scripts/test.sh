#!/usr/bin/env bash
# Runs every weft check: lint, then all tests against a real Kafka-protocol
# broker (tansu) on loopback. This is what `.ci/run` calls.
#
#   scripts/test.sh                    # lint + all tests
#   scripts/test.sh -- --nocapture     # extra args go to `cargo test`
#   scripts/test.sh -p weft-normalize  # ...so do package selections
#   scripts/test.sh shape_1            # ...and name filters
#
# Environment:
#   WEFT_TEST_BROKERS=host:port  use this broker; start none (and install none)
#   WEFT_TEST_LINT=0             skip the fmt and clippy step
#   WEFT_TEST_BENCH_SMOKE=0      skip the benchmark harness's smoke run
#   WEFT_TEST_TANSU_STORAGE=URL  the started broker's storage engine, default
#                                sqlite://tansu.db in a temp dir (memory://tansu/
#                                stalls a fetch that starts inside a record batch,
#                                which resuming from a checkpoint does)
#
# Idempotent: installs only what is missing: the wasm32-wasip2 target; the
# tansu broker (patched, see scripts/tansu/; ~21 min to build the first time on 2 cores); Chromium and
# playwright-core for the dashboard test; the plugin toolchains (clang, lld,
# wasi-libc from Debian, wit-bindgen-cli and wasm-tools from crates.io, ~8 min
# the first time; componentize-py from PyPI); the benchmark harness's peers
# (Quix Streams and Bytewax from PyPI, unless WEFT_TEST_BENCH_SMOKE=0).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

# Phase timings, printed at exit (also after a failure).
PHASES=()
phase_started=0
phase_name=""
phase() {
  phase_end
  phase_name="$1"
  phase_started=$SECONDS
  log "$1"
}
phase_end() {
  if [[ -n "$phase_name" ]]; then
    PHASES+=("$(printf '%6ss  %s' "$((SECONDS - phase_started))" "$phase_name")")
    phase_name=""
  fi
}
summary() {
  phase_end
  if ((${#PHASES[@]})); then
    printf '\n--- scripts/test.sh timings ---\n' >&2
    printf '%s\n' "${PHASES[@]}" >&2
  fi
}

# --- broker lifecycle ------------------------------------------------------
broker_pid=""
broker_dir=""
cleanup() {
  local status=$?
  if [[ -n "$broker_pid" ]] && kill -0 "$broker_pid" 2>/dev/null; then
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    printf '==> stopped the tansu broker (pid %s)\n' "$broker_pid" >&2
  fi
  if [[ -n "$broker_dir" ]]; then
    if ((status != 0)) && [[ -s "$broker_dir/tansu.log" ]]; then
      printf '==> broker log kept: %s (last lines below)\n' "$broker_dir/tansu.log" >&2
      tail -n 20 "$broker_dir/tansu.log" >&2 || true
    else
      rm -rf "$broker_dir"
    fi
  fi
  summary
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
    return
  fi
  local port
  for _ in $(seq 200); do
    port=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  die "found no free TCP port on 127.0.0.1"
}

accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The test broker: tansu 0.6.0 from crates.io with its group coordinator
# patched (scripts/tansu/group-coordinator.patch says what and why), built
# once into $CARGO_BIN under a name of its own. A new patch gets a new name.
TANSU_VERSION=0.6.0
TANSU_BIN="$CARGO_BIN/tansu-$TANSU_VERSION-weft.2"
TANSU_SHA256=4fdd85473ec265140488cf8d55e82b844f5c051c8916fabdd4a71156ac053f6d
TANSU_BROKER_SHA256=93c1e91b40c2a706dfdbe9a795c08c70918c874ad23f6e0e87564cc0a180e720

install_tansu() {
  local work crate sum
  work="$(mktemp -d "${TMPDIR:-/tmp}/weft-tansu-build.XXXXXX")"
  for crate in tansu:$TANSU_SHA256 tansu-broker:$TANSU_BROKER_SHA256; do
    sum="${crate#*:}" crate="${crate%%:*}"
    curl -fsSL --retry 3 -o "$work/$crate.crate" \
      "https://static.crates.io/crates/$crate/$crate-$TANSU_VERSION.crate" ||
      die "could not download $crate $TANSU_VERSION from crates.io"
    echo "$sum  $work/$crate.crate" | sha256sum -c --quiet - ||
      die "$crate-$TANSU_VERSION.crate does not have the checksum crates.io's index gives"
    tar -xzf "$work/$crate.crate" -C "$work"
  done
  (cd "$work/tansu-broker-$TANSU_VERSION" && git apply -p1 "$OLDPWD/scripts/tansu/group-coordinator.patch") ||
    die "scripts/tansu/group-coordinator.patch does not apply to tansu-broker $TANSU_VERSION"
  printf '\n[patch.crates-io]\ntansu-broker = { path = "../tansu-broker-%s" }\n' "$TANSU_VERSION" \
    >>"$work/tansu-$TANSU_VERSION/Cargo.toml"
  # Not --locked: the patch moves tansu-broker's lock entry to the path;
  # every other crate keeps the version tansu's Cargo.lock pins.
  echo "running: cargo build --release --features dynostore,libsql (tansu $TANSU_VERSION, patched)"
  (cd "$work/tansu-$TANSU_VERSION" &&
    CARGO_TARGET_DIR="$work/target" cargo build --release --features dynostore,libsql) ||
    die "building the patched tansu failed (above)"
  mkdir -p "$CARGO_BIN"
  cp "$work/target/release/tansu" "$TANSU_BIN.tmp" && mv "$TANSU_BIN.tmp" "$TANSU_BIN"
  rm -rf "$work"
}

# Starts tansu on a free port; sets broker_pid and WEFT_TEST_BROKERS.
start_broker() {
  local tansu="$1" port deadline attempt
  local storage="${WEFT_TEST_TANSU_STORAGE:-sqlite://tansu.db}"
  broker_dir="$(mktemp -d "${TMPDIR:-/tmp}/weft-tansu.XXXXXX")"
  for attempt in 1 2 3; do
    port="$(free_port)"
    [[ -n "$port" ]] || die "found no free TCP port on 127.0.0.1"
    echo "starting: $tansu broker on 127.0.0.1:$port (storage $storage in $broker_dir)" >&2
    (
      cd "$broker_dir"
      exec "$tansu" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "$storage" \
        </dev/null >>"$broker_dir/tansu.log" 2>&1
    ) &
    broker_pid=$!
    deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
      if ! kill -0 "$broker_pid" 2>/dev/null; then
        break # exited: maybe the port was taken in the meantime; try another
      fi
      if accepts "$port"; then
        export WEFT_TEST_BROKERS="127.0.0.1:$port"
        echo "tansu (pid $broker_pid) accepts connections at $WEFT_TEST_BROKERS" >&2
        return
      fi
      sleep 0.05
    done
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=""
    rm -f "$broker_dir"/tansu.db*
    echo "attempt $attempt: tansu did not come up on port $port" >&2
    tail -n 10 "$broker_dir/tansu.log" >&2 || true
  done
  die "could not start the tansu broker (log: $broker_dir/tansu.log)"
}

# --- 1. toolchain -----------------------------------------------------------
phase "toolchain: rustc and the wasm32-wasip2 target"
command -v cargo >/dev/null 2>&1 || export PATH="$CARGO_BIN:$PATH"
command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust (https://rustup.rs), then run this again"
rustc --version
installed_targets="$(rustup target list --installed)"
if grep -qx wasm32-wasip2 <<<"$installed_targets"; then
  echo "wasm32-wasip2 is installed"
else
  echo "installing: rustup target add wasm32-wasip2"
  rustup target add wasm32-wasip2
fi

# Installs the Debian packages given that are not installed yet.
apt_install() {
  local missing=() pkg sudo_=""
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    echo "installed: $*"
    return
  fi
  command -v apt-get >/dev/null 2>&1 || die "not Debian/Ubuntu: install ${missing[*]} yourself"
  echo "installing: apt-get install ${missing[*]}"
  [[ "$(id -u)" == 0 ]] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Installs a crates.io binary at an exact version unless `$1 --version` says so.
cargo_install() {
  local bin="$1" crate="$2" version="$3"
  shift 3
  if [[ "$("$bin" --version 2>/dev/null)" == *" $version" ]]; then
    echo "installed: $bin $version"
  else
    echo "installing: cargo install --locked $crate@$version $*"
    cargo install --locked "$crate@$version" "$@"
  fi
}

# --- the browser test's needs: Debian's chromium, playwright-core from npm ----
phase "browser test: chromium and playwright-core"
if [[ -x "${WEFT_CHROMIUM:-/usr/bin/chromium}" ]]; then
  echo "chromium is installed: ${WEFT_CHROMIUM:-/usr/bin/chromium}"
else
  apt_install chromium ||
    die "could not install chromium (the dashboard test drives it); set WEFT_CHROMIUM to a Chromium binary"
fi
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 ||
  die "node and npm are needed for the dashboard test (Debian: apt-get install nodejs npm)"
if [[ -d tests/browser/node_modules/playwright-core ]]; then
  echo "playwright-core is installed"
else
  (cd tests/browser && npm ci --no-audit --no-fund)
fi
dashboards/web/vendor.sh --check

# --- plugin toolchains: the examples and scaffolds in every language ----------
# (tests/tests/languages.rs builds them; the JS projects install their pinned
# npm packages themselves with `npm ci` / `npm install`.)
phase "plugin toolchains: C (clang, wasi-libc, wit-bindgen, wasm-tools), Python (componentize-py)"
apt_install clang lld wasi-libc libclang-rt-dev-wasm32 make ||
  die "could not install the C toolchain (clang, lld, wasi-libc)"
cargo_install wit-bindgen wit-bindgen-cli 0.63.0 --no-default-features --features c
cargo_install wasm-tools wasm-tools 1.263.0 --no-default-features --features component
if [[ "$(componentize-py --version 2>/dev/null)" == "componentize-py 0.25.1" ]]; then
  echo "installed: componentize-py 0.25.1"
else
  echo "installing: pip install componentize-py==0.25.1"
  python3 -m pip install --quiet componentize-py==0.25.1
  hash -r
  command -v componentize-py >/dev/null 2>&1 ||
    export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
fi
componentize-py --version

# --- the benchmark harness's peers (item 7): Quix Streams and Bytewax ----------
if [[ "${WEFT_TEST_BENCH_SMOKE:-1}" != 0 ]]; then
  phase "benchmark peers: Quix Streams and Bytewax (PyPI, tests/peers/requirements.txt)"
  if python3 -c 'import quixstreams, bytewax' 2>/dev/null; then
    echo "installed: quixstreams, bytewax"
  else
    echo "installing: pip install -r tests/peers/requirements.txt"
    python3 -m pip install --quiet -r tests/peers/requirements.txt
  fi
fi

# --- 2. lint (fails fast, before the long broker build) ----------------------
if [[ "${WEFT_TEST_LINT:-1}" != 0 ]]; then
  phase "lint: cargo fmt --all -- --check"
  cargo fmt --all -- --check ||
    die "formatting differs (diff above). Run \`cargo fmt --all\` and commit the result."
  (cd plugins && cargo fmt --all -- --check) ||
    die "formatting of plugins/ differs (diff above). Run \`cd plugins && cargo fmt --all\`."

  phase "lint: cargo clippy --workspace --all-targets --release -- -D warnings"
  cargo clippy --workspace --all-targets --release -- -D warnings ||
    die "clippy found problems (above); fix them or run with WEFT_TEST_LINT=0 to skip linting"
  phase "lint: clippy on the plugins workspace (wasm32-wasip2)"
  (cd plugins && cargo clippy --release --locked -- -D warnings) ||
    die "clippy found problems in plugins/ (above)"
else
  log "lint skipped (WEFT_TEST_LINT=0)"
fi

# --- 3. broker ----------------------------------------------------------------
if [[ -n "${WEFT_TEST_BROKERS:-}" ]]; then
  log "using the broker at WEFT_TEST_BROKERS=$WEFT_TEST_BROKERS (starting none)"
else
  if [[ ! -x "$TANSU_BIN" ]]; then
    phase "install the tansu broker (first time only: ~21 min on 2 cores)"
    install_tansu
  else
    log "tansu found: $TANSU_BIN"
  fi
  phase "start the tansu broker"
  start_broker "$TANSU_BIN"
fi

# --- 4. tests -------------------------------------------------------------------
# The whole workspace, unless the arguments pick packages (`-p NAME`).
scope=(--workspace)
for arg in "$@"; do
  case "$arg" in
    --) break ;;
    -p | -p* | --package | --package=*) scope=() ;;
  esac
done
phase "tests: cargo test ${scope[*]} --release --no-fail-fast $*"
echo "WEFT_TEST_BROKERS=$WEFT_TEST_BROKERS"
cargo test "${scope[@]}" --release --no-fail-fast "$@"

# --- 5. benchmark smoke: the harnesses build and run (nothing is timed) --------
if [[ "${WEFT_TEST_BENCH_SMOKE:-1}" != 0 ]]; then
  phase "bench smoke: cargo bench -p weft-tests --bench harness -- --smoke"
  cargo bench -p weft-tests --bench harness -- --smoke
fi
phase_end
log "all checks passed"
