#!/usr/bin/env bash
# Builds weft (bundled plugins included) and runs it on the built-in demo
# source. Extra args go to `weft run`, e.g. `scripts/demo.sh --listen 127.0.0.1:9000`.
# State lives in target/demo-data unless --data-dir or WEFT_DATA_DIR says otherwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v cargo >/dev/null 2>&1 || export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

installed_targets="$(rustup target list --installed)"
if ! grep -qx wasm32-wasip2 <<<"$installed_targets"; then
  echo "==> rustup target add wasm32-wasip2"
  rustup target add wasm32-wasip2
fi

echo "==> cargo build --release -p weft (the first build takes a few minutes)"
cargo build --release -p weft

args=("$@")
listen="${WEFT_LISTEN:-127.0.0.1:8080}"
has_source=false has_data_dir=false
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --source | --source=*) has_source=true ;;
    --data-dir | --data-dir=*) has_data_dir=true ;;
    --listen) listen="${args[i + 1]:-$listen}" ;;
    --listen=*) listen="${args[i]#--listen=}" ;;
  esac
done
[[ $has_source == true || -n "${WEFT_SOURCE:-}" ]] || args=(--source demo "${args[@]}")
[[ $has_data_dir == true || -n "${WEFT_DATA_DIR:-}" ]] || args=(--data-dir target/demo-data "${args[@]}")

cat <<EOF
==> target/release/weft run ${args[*]}
    Dashboard:  http://$listen/
    Core:       curl -s http://$listen/api/plugins/core/query
    Last 5 min: curl -s 'http://$listen/api/plugins/core/query?window=5m'
    Status:     curl -s http://$listen/api/status
    Stop with Ctrl-C (a final checkpoint is written; the next start resumes).
EOF
exec target/release/weft run "${args[@]}"
