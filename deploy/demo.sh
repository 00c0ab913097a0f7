#!/usr/bin/env bash
# Set up dnstrail (deploy/setup.sh) and write a report on the bundled sample capture.
# Run as root on a fresh Debian 12 machine. Writes report.html (and report.md) in the repo root.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/deploy/setup.sh"
cd "$here"
.venv/bin/dnstrail report samples/incident -o report.html
.venv/bin/dnstrail report samples/incident -o report.md
.venv/bin/dnstrail replay samples/incident --lookups | head -n 25
cat <<MSG

Wrote $here/report.html and $here/report.md from samples/incident (see samples/README.md).
To record live on this node (needs kernel headers and tracefs: run deploy/setup.sh --lab once):
    .venv/bin/dnstrail record -o /var/tmp/dns-capture --duration 60s
    .venv/bin/dnstrail report /var/tmp/dns-capture -o incident.html
MSG
