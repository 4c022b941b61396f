#!/bin/sh
# Runs Wagtail's own StreamField data migration (MigrateStreamData) against a
# PostgreSQL database: see README.md. The virtualenv (VENV, default a
# directory under /tmp) is made and filled from PyPI when it lacks Wagtail or
# psycopg2; WAGTAIL pins a version (e.g. WAGTAIL='wagtail==8.0.1').
#
#   tools/wagtail-bench/run.sh postgres://postgres@127.0.0.1:5432/db \
#       --old-name title_2 --new-name affiliation
#   tools/wagtail-bench/run.sh --setup     # only make the virtualenv
#
# Exits 3 when the virtualenv cannot be made or filled.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${VENV:-${TMPDIR:-/tmp}/backfill-wagtail-bench}
if ! "$venv/bin/python" -c 'import wagtail, psycopg2' 2>/dev/null; then
    echo "wagtail-bench: installing ${WAGTAIL:-wagtail} and psycopg2-binary into $venv" >&2
    python3 -m venv "$venv" >&2 || {
        echo "wagtail-bench: cannot create a virtualenv with python3 -m venv (is python3 with venv installed?)" >&2
        exit 3
    }
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${WAGTAIL:-wagtail}" psycopg2-binary >&2 || {
        echo "wagtail-bench: cannot install Wagtail from PyPI into $venv" >&2
        exit 3
    }
fi
if [ "${1:-}" = "--setup" ]; then
    "$venv/bin/python" -c 'import wagtail, django; print("wagtail-bench: Wagtail", wagtail.__version__, "Django", django.__version__, "in '"$venv"'")'
    exit 0
fi
cd "$here"
# No bytecode written into the source tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" "$here/migrate.py" "$@"
