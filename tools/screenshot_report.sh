#!/usr/bin/env bash
# Renders a losa report in headless Chromium, so a person can look at it (run by hand, not in CI).
#
# Needs Debian's chromium (this script installs nothing):
#     sudo apt-get install -y chromium          # and poppler-utils for --print
#
# Usage:
#     tools/screenshot_report.sh [--print] [TARGET] [OUT]
#
#   TARGET  a report.html, or a runs folder (runs/<recipe>; its report is rebuilt with
#           `runner report` first). Default: a demo runs folder of hand-made records
#           (`cargo run -p losa-reports --example demo_runs`), reported into a temporary folder.
#   OUT     the PNG to write. Default: report.png in the working directory.
#   --print also prints the page to OUT.pdf through the @media print stylesheet (A4 landscape)
#           and renders its first pages to OUT-print-<n>.png (with pdftoppm, if installed).
#
# Environment: CHROMIUM (default: chromium), WINDOW (default: 1400,2000 = width,height in px).
set -euo pipefail

print=false
if [[ "${1:-}" == "--print" ]]; then
    print=true
    shift
fi
target="${1:-}"
out="${2:-report.png}"
chromium="${CHROMIUM:-chromium}"
window="${WINDOW:-1400,2000}"
repo="$(cd "$(dirname "$0")/.." && pwd)"

if ! command -v "$chromium" >/dev/null; then
    echo "error: $chromium not found; install it with: sudo apt-get install -y chromium" >&2
    exit 2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [[ -z "$target" ]]; then
    (cd "$repo" && cargo run -q -p losa-reports --example demo_runs -- "$work/runs/demo")
    target="$work/runs/demo"
fi
if [[ -d "$target" ]]; then
    (cd "$repo" && cargo run -q --bin runner -- report "$(realpath "$target")" --out "$work/report")
    html="$work/report/report.html"
elif [[ -f "$target" ]]; then
    html="$target"
else
    echo "error: $target is neither a report.html nor a runs folder" >&2
    exit 2
fi
html="$(realpath "$html")"

# No network, no profile, no first-run UI: the report must render from the file alone.
flags=(--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update
       --disable-sync --no-first-run --hide-scrollbars --user-data-dir="$work/profile")
"$chromium" "${flags[@]}" --screenshot="$(realpath -m "$out")" --window-size="$window" "file://$html" 2>/dev/null
echo "screenshot: $out"

if $print; then
    pdf="${out%.png}.pdf"
    "$chromium" "${flags[@]}" --no-pdf-header-footer --print-to-pdf="$(realpath -m "$pdf")" "file://$html" 2>/dev/null
    echo "print: $pdf"
    if command -v pdftoppm >/dev/null; then
        pdftoppm -png -r 60 -f 1 -l 3 "$pdf" "${out%.png}-print"
        echo "print pages: ${out%.png}-print-*.png"
    fi
fi
