#!/usr/bin/env bash
# Copies the pinned Chart.js browser build (package-lock.json) into vendor/,
# where weft embeds it: the dashboard works offline, with no CDN.
#   dashboards/web/vendor.sh          refresh vendor/ from npm
#   dashboards/web/vendor.sh --check  fail if vendor/ differs from the pinned package
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --silent
src=node_modules/chart.js/dist/chart.umd.min.js
if [[ "${1:-}" == --check ]]; then
  cmp -s "$src" vendor/chart.umd.min.js ||
    { echo "dashboards/web/vendor/chart.umd.min.js differs from the pinned chart.js; run dashboards/web/vendor.sh" >&2; exit 1; }
  echo "vendor/chart.umd.min.js matches chart.js $(node -p 'require("./node_modules/chart.js/package.json").version')"
else
  cp "$src" vendor/chart.umd.min.js
  cp node_modules/chart.js/LICENSE.md vendor/chart.js-LICENSE.md
  echo "vendored chart.js $(node -p 'require("./node_modules/chart.js/package.json").version')"
fi
