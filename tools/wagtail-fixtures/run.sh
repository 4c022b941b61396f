#!/bin/sh
# Regenerates crates/job/tests/fixtures/{streamfield,pyjson}.json with Wagtail
# from PyPI. VENV (default: a fresh directory under /tmp) is kept for reruns;
# WAGTAIL pins a version (e.g. WAGTAIL='wagtail==8.0.1').
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${VENV:-${TMPDIR:-/tmp}/backfill-wagtail-fixtures}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet "${WAGTAIL:-wagtail}"
"$venv/bin/python" "$here/generate.py"
