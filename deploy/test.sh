#!/usr/bin/env bash
# Set up everything the tests need (deploy/setup.sh --lab --jupyter: the notebook's kernel
# too), then run the whole test suite.
# Run as root: the live tests load BPF programs and build network namespaces and cgroups.
# Extra arguments go to pytest (e.g. deploy/test.sh -k replay).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/deploy/setup.sh" --lab --jupyter || exit $?
cd "$here"
.venv/bin/python -m pytest -ra "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "deploy/test.sh: pytest collected no tests" >&2
fi
exit "$rc"
