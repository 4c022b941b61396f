"""Applies one StreamField operation to CertificatePage.signatories with
Wagtail's own data migration, `MigrateStreamData`, as a project's migration
would: every page of the model and every revision of its content type
(`revisions_from=None`), in one transaction.

Usage: migrate.py DATABASE_URL [--operation rename_struct_children]
       [--block-path signatory] --old-name OLD --new-name NEW

Prints one line on stdout:

  wagtail-bench: wall_ms=… migrate_ms=… commit_ms=… setup_ms=… pages_written=… revisions_written=… wagtail=… django=… python=…

wall_ms is from the start of the operation to the end of its commit;
setup_ms is Python's and Django's start before it. The rows written are
counted inside the transaction, after the operation and outside the timed
part: rows whose xmin is the transaction's id.
"""

import argparse
import os
import platform
import sys
import time

T_START = time.perf_counter()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("database_url")
    parser.add_argument(
        "--operation",
        default="rename_struct_children",
        choices=["rename_struct_children", "rename_stream_children"],
    )
    parser.add_argument("--block-path", default="signatory")
    parser.add_argument("--old-name", required=True)
    parser.add_argument("--new-name", required=True)
    args = parser.parse_args()

    os.environ["BENCH_DATABASE_URL"] = args.database_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "settings"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    import django

    django.setup()

    import wagtail
    from django.apps import apps
    from django.db import connection
    from wagtail.blocks.migrations.migrate_operation import MigrateStreamData
    from wagtail.blocks.migrations.operations import (
        RenameStreamChildrenOperation,
        RenameStructChildrenOperation,
    )

    operation = {
        "rename_struct_children": RenameStructChildrenOperation,
        "rename_stream_children": RenameStreamChildrenOperation,
    }[args.operation](old_name=args.old_name, new_name=args.new_name)
    migration = MigrateStreamData(
        app_name="cms",
        model_name="certificatepage",
        field_name="signatories",
        operations_and_block_paths=[(operation, args.block_path)],
        revisions_from=None,
    )

    connection.ensure_connection()
    t0 = time.perf_counter()
    setup_ms = (t0 - T_START) * 1000
    # As `migrate` runs a RunPython operation on PostgreSQL: inside the
    # schema editor's transaction.
    with connection.schema_editor(atomic=True) as schema_editor:
        migration.migrate_stream_data_forward(apps, schema_editor)
        t1 = time.perf_counter()
        with connection.cursor() as cur:
            counts = []
            for table in ("cms_certificatepage", "wagtailcore_revision"):
                cur.execute(
                    f"SELECT count(*) FROM {table} WHERE xmin = pg_current_xact_id()::xid"
                )
                counts.append(cur.fetchone()[0])
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    migrate_ms = (t1 - t0) * 1000
    commit_ms = (t3 - t2) * 1000
    print(
        "wagtail-bench:"
        f" wall_ms={migrate_ms + commit_ms:.1f}"
        f" migrate_ms={migrate_ms:.1f}"
        f" commit_ms={commit_ms:.1f}"
        f" setup_ms={setup_ms:.1f}"
        f" pages_written={counts[0]}"
        f" revisions_written={counts[1]}"
        f" wagtail={wagtail.__version__}"
        f" django={django.__version__}"
        f" python={platform.python_version()}",
        flush=True,
    )


if __name__ == "__main__":
    main()
