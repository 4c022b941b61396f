#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/<target>/ from the repository's
fixtures, job files and the example revision document. Run from the
repository root: python3 fuzz/seeds/generate.py"""
import hashlib
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEEDS = ROOT / "fuzz" / "seeds"
OPS = [
    "rename_stream_children",
    "rename_struct_children",
    "remove_stream_children",
    "remove_struct_children",
    "stream_children_to_list_block",
    "stream_children_to_stream_block",
    "alter_block_value",
    "stream_children_to_struct_block",
    "list_children_to_struct_block",
]


def write(target, text):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


revision = (SEEDS / "revision.json").read_text()
rev = json.loads(revision)
stream = json.loads(ROOT.joinpath("crates/job/tests/fixtures/streamfield.json").read_text())
pyjson = json.loads(ROOT.joinpath("crates/job/tests/fixtures/pyjson.json").read_text())

# selector: a query on the first line, a document after it.
selectors = [
    "$.nodes[?@.type == 'x'].title",
    "$.title",
    "$..id",
    "$.*",
    "$..*",
    "$.nodes[*]",
    "$.nodes[-1:0:-2]",
    "$['a/b']['c~d']",
    "$.l[?@.n > 1 && @.n < 10 || !@.m]",
    "$.l[?length(@.title) > 3]",
    "$.l[?match(@.slug, 'cert.*')]",
    "$.l[?search(@.slug, '[0-9]+')]",
    "$[?count(@.*) == 2]",
    "$..[?value(@..id) == 'h1']",
]
for s in selectors:
    write("selector", s + "\n")
    write("selector", s + "\n" + revision)
for case in stream["cases"][:6]:
    write("selector", "$..[?@.type == 'heading'].value\n" + json.dumps(case["input"]))

# json_in_string: the strings Python wrote, and the texts they came from.
for case in pyjson["cases"]:
    write("json_in_string", case["value"])
    write("json_in_string", case["python_output"])
for v in rev.values():
    if isinstance(v, str) and v[:1] in "[{":
        write("json_in_string", v)

# streamfield: op pick (a character whose byte is the index modulo 9: "?" is 63),
# path, two argument lines, raw data.
for case in stream["cases"]:
    i = OPS.index(case["operation"])
    a = case["args"]
    if case["operation"] == "alter_block_value":
        first, second = json.dumps(a["new_value"]), ""
    elif case["operation"] == "stream_children_to_stream_block":
        first, second = ",".join(a["block_names"]), a["stream_block_name"]
    else:
        vals = list(a.values())
        first = vals[0]
        second = vals[1] if len(vals) > 1 else ""
    if "\n" in first or "\n" in second or "\n" in case["block_path"]:
        continue
    write(
        "streamfield",
        "\n".join([chr(63 + i), case["block_path"], first, second, json.dumps(case["input"])]),
    )

# spec: the job files, one with parameter overrides.
for p in sorted((ROOT / "jobs").glob("*.toml")):
    write("spec", p.read_text())
PARAMS = '''name = "rename-${old}"
query = "SELECT id FROM ${table} LIMIT ${limit}"

[params.table]
type = "identifier"
default = "wagtailcore_revision"
description = "the table"

[params.old]
type = "identifier"

[params.limit]
type = "integer"
default = 10

[params.ratio]
type = "number"
default = 1.5

[params.dry]
type = "boolean"
default = false
'''
write("spec", PARAMS)
write("spec", PARAMS + "\0old=institute_text\nlimit=20\n")
job = (ROOT / "jobs" / "wagtail-rename-field.toml").read_text()
write("spec", job + '\n[params.extra]\ntype = "string"\ndefault = "x"\n\0extra=y\n')
