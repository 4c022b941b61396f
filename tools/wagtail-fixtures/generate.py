"""Fixtures for crates/job's streamfield and pyjson modules, written by the
real thing: Wagtail's own StreamField migration operations and
`apply_changes_to_raw_data`, and Python's own `json.dumps`.

Writes crates/job/tests/fixtures/streamfield.json and pyjson.json (paths
relative to the repository root, which is two levels above this file).
Run it through run.sh, which makes a virtualenv with Wagtail from PyPI.
"""

import json
import platform
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import django
from django.conf import settings

# The least Django needs before `wagtail.blocks` can be imported: block
# definitions reach for the static files storage when their module loads.
settings.configure(USE_I18N=False, STATIC_URL="/static/")
django.setup()

import wagtail  # noqa: E402
from wagtail import blocks  # noqa: E402
from wagtail.blocks.migrations import operations  # noqa: E402
from wagtail.blocks.migrations.utils import apply_changes_to_raw_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "job" / "tests" / "fixtures"

# --- Block definitions ------------------------------------------------------
# `apply_changes_to_raw_data` walks the raw data by its block definitions;
# this one StreamField definition has every shape the cases walk through.


def char():
    return blocks.CharBlock()


def signatory_block():
    return blocks.StructBlock(
        [("name", char()), ("title_1", char()), ("title_2", char()), ("organization", char())]
    )


def card_block():
    return blocks.StructBlock(
        [
            ("title", char()),
            (
                "links",
                blocks.StreamBlock(
                    [
                        ("link", blocks.StructBlock([("url", char()), ("text", char())])),
                        ("text", char()),
                    ]
                ),
            ),
            ("tags", blocks.ListBlock(char())),
            ("people", blocks.ListBlock(blocks.StructBlock([("name", char()), ("role", char())]))),
        ]
    )


STREAM = blocks.StreamBlock(
    [
        ("heading", char()),
        ("para", char()),
        ("quote", char()),
        ("signatory", signatory_block()),
        ("card", card_block()),
        (
            "section",
            blocks.StreamBlock(
                [
                    ("para", char()),
                    ("heading", char()),
                    ("card", card_block()),
                    ("items", blocks.ListBlock(blocks.StreamBlock([("para", char()), ("quote", char())]))),
                ]
            ),
        ),
        ("tags", blocks.ListBlock(char())),
        (
            "rows",
            blocks.ListBlock(
                blocks.StructBlock([("label", char()), ("inner", blocks.StreamBlock([("para", char())]))])
            ),
        ),
        # A StreamBlock child literally named "item", which a block path
        # cannot tell from a ListBlock child by name alone.
        ("item", blocks.StructBlock([("x", char())])),
    ]
)
STREAMFIELD = SimpleNamespace(field=SimpleNamespace(stream_block=STREAM))

OPERATIONS = {
    "rename_stream_children": operations.RenameStreamChildrenOperation,
    "rename_struct_children": operations.RenameStructChildrenOperation,
    "remove_stream_children": operations.RemoveStreamChildrenOperation,
    "remove_struct_children": operations.RemoveStructChildrenOperation,
    "stream_children_to_list_block": operations.StreamChildrenToListBlockOperation,
    "stream_children_to_stream_block": operations.StreamChildrenToStreamBlockOperation,
    "alter_block_value": operations.AlterBlockValueOperation,
    "stream_children_to_struct_block": operations.StreamChildrenToStructBlockOperation,
    "list_children_to_struct_block": operations.ListChildrenToStructBlockOperation,
}

# The `signatories` StreamField of a Wagtail certificate page revision, as
# the revision stores it (a JSON string written by json.dumps).
SIGNATORIES = (
    '[{"type": "signatory", "value": {"name": "Sarah Alvarez", "title_1": "Program Director", '
    '"title_2": "Massachusetts Institute of Technology", "organization": "MITx"}, '
    '"id": "b6d500ad-2b8f-4c8c-a2cd-295b59ce76ab"}, {"type": "signatory", "value": '
    '{"name": "Chen Wei", "title_1": "Lecturer", "title_2": "Massachusetts Institute of Technology", '
    '"organization": "MIT EECS"}, "id": "22881ac0-7a8e-4b70-a264-e25d3c4eba18"}, '
    '{"type": "signatory", "value": {"name": "Anant Agarwal", "title_1": "CEO", '
    '"title_2": "Massachusetts Institute of Technology", "organization": "edX"}, '
    '"id": "db9df445-b00a-425c-8bcc-76652c1748ad"}, {"type": "signatory", "value": '
    '{"name": "Esther Duflo", "title_1": "Professor", "title_2": "Massachusetts Institute of Technology", '
    '"organization": "MIT Economics"}, "id": "27e6126e-34b4-43f5-aba1-801e02512c34"}]'
)
signatories = json.loads(SIGNATORIES)


def card(title="Card", people=None, tags=None, links=None):
    return {
        "title": title,
        "links": links
        if links is not None
        else [
            {"type": "link", "value": {"url": "https://a.example", "text": "A"}, "id": "l1"},
            {"type": "text", "value": "plain", "id": "l2"},
            {"type": "link", "value": {"url": "https://b.example", "text": "B"}, "id": "l3"},
        ],
        "tags": tags if tags is not None else [{"type": "item", "value": "x", "id": "t1"}],
        "people": people
        if people is not None
        else [
            {"type": "item", "value": {"name": "Ada", "role": "author"}, "id": "p1"},
            {"type": "item", "value": {"name": "Bob", "role": "editor"}, "id": "p2"},
        ],
    }


OLD_PEOPLE = [{"name": "Ada", "role": "author"}, {"name": "Bob", "role": "editor"}]

MIXED = [
    {"type": "heading", "value": "Title", "id": "h1"},
    {"type": "para", "value": "One", "id": "a1"},
    {"type": "quote", "value": "Q", "id": "q1"},
    {"type": "para", "value": "Two", "id": "a2"},
    {"type": "heading", "value": "Second", "id": "h2"},
    {"type": "para", "value": "Three"},
]

SECTION = [
    {
        "type": "section",
        "value": [
            {"type": "heading", "value": "S", "id": "sh"},
            {"type": "para", "value": "P1", "id": "sp1"},
            {"type": "card", "value": card(), "id": "sc"},
            {"type": "para", "value": "P2", "id": "sp2"},
            {
                "type": "items",
                "value": [
                    {
                        "type": "item",
                        "value": [
                            {"type": "para", "value": "i1", "id": "ip1"},
                            {"type": "quote", "value": "iq1", "id": "iq1"},
                        ],
                        "id": "it1",
                    },
                    {"type": "item", "value": [{"type": "quote", "value": "iq2", "id": "iq2"}], "id": "it2"},
                ],
                "id": "si",
            },
        ],
        "id": "s1",
    },
    {"type": "para", "value": "outside", "id": "o1"},
    {"type": "section", "value": [{"type": "para", "value": "P3", "id": "sp3"}], "id": "s2"},
]

SECTION_OLD_ITEMS = [
    {
        "type": "section",
        "value": [
            {
                "type": "items",
                "value": [
                    [{"type": "para", "value": "i1", "id": "ip1"}, {"type": "quote", "value": "iq1", "id": "iq1"}],
                    [{"type": "quote", "value": "iq2", "id": "iq2"}],
                ],
                "id": "si",
            }
        ],
        "id": "s1",
    }
]

CARDS = [
    {"type": "card", "value": card(), "id": "c1"},
    {"type": "heading", "value": "H", "id": "h1"},
    {"type": "card", "value": card("Second", people=OLD_PEOPLE, tags=["red", "green"]), "id": "c2"},
]

TAGS_NEW = [
    {
        "type": "tags",
        "value": [
            {"type": "item", "value": "red", "id": "t1"},
            {"type": "item", "value": "green", "id": "t2"},
        ],
        "id": "tg",
    }
]
TAGS_OLD = [{"type": "tags", "value": ["red", "green"], "id": "tg"}]
TAGS_EMPTY = [{"type": "tags", "value": [], "id": "tg"}]
TAGS_MIXED_OLD_FIRST = [
    {"type": "tags", "value": ["red", {"type": "item", "value": "green", "id": "t2"}], "id": "tg"}
]
TAGS_ITEM_WITHOUT_ID = [
    {"type": "tags", "value": [{"type": "item", "value": "red"}, {"type": "item", "value": "green", "id": "t2"}]}
]

ROWS_OLD = [
    {
        "type": "rows",
        "value": [
            {"label": "L1", "inner": [{"type": "para", "value": "r1", "id": "rp1"}]},
            {"label": "L2", "inner": []},
        ],
        "id": "rw",
    }
]
ROWS_NEW = [
    {
        "type": "rows",
        "value": [
            {"type": "item", "value": {"label": "L1", "inner": [{"type": "para", "value": "r1", "id": "rp1"}]}, "id": "r1"},
            {"type": "item", "value": {"label": "L2", "inner": []}, "id": "r2"},
        ],
        "id": "rw",
    }
]

ITEM_CHILD = [
    {"type": "para", "value": "first", "id": "a1"},
    {"type": "item", "value": {"x": "1"}, "id": "i1"},
    {"type": "item", "value": {"x": "2"}, "id": "i2"},
]

# (name, block path, operation, args, input)
CASES = [
    # rename_stream_children
    ("rename_stream_top", "", "rename_stream_children", {"old_name": "heading", "new_name": "title"}, MIXED),
    ("rename_stream_absent", "", "rename_stream_children", {"old_name": "nope", "new_name": "x"}, MIXED),
    ("rename_stream_same_name", "", "rename_stream_children", {"old_name": "para", "new_name": "para"}, MIXED),
    ("rename_stream_empty_stream", "", "rename_stream_children", {"old_name": "para", "new_name": "text"}, []),
    ("rename_stream_in_section", "section", "rename_stream_children", {"old_name": "para", "new_name": "text"}, SECTION),
    ("rename_stream_in_struct_child", "card.links", "rename_stream_children", {"old_name": "link", "new_name": "anchor"}, CARDS),
    ("rename_stream_deep", "section.card.links", "rename_stream_children", {"old_name": "text", "new_name": "note"}, SECTION),
    ("rename_stream_in_list_new", "section.items.item", "rename_stream_children", {"old_name": "quote", "new_name": "cite"}, SECTION),
    ("rename_stream_in_list_old", "section.items.item", "rename_stream_children", {"old_name": "quote", "new_name": "cite"}, SECTION_OLD_ITEMS),
    ("rename_stream_absent_parent", "section", "rename_stream_children", {"old_name": "para", "new_name": "text"}, MIXED),
    ("rename_stream_signatories", "", "rename_stream_children", {"old_name": "signatory", "new_name": "person"}, signatories),
    # rename_struct_children
    ("rename_struct_signatories", "signatory", "rename_struct_children", {"old_name": "title_1", "new_name": "title"}, signatories),
    ("rename_struct_onto_existing", "signatory", "rename_struct_children", {"old_name": "title_1", "new_name": "title_2"}, signatories),
    ("rename_struct_onto_earlier", "signatory", "rename_struct_children", {"old_name": "organization", "new_name": "name"}, signatories),
    ("rename_struct_absent_key", "signatory", "rename_struct_children", {"old_name": "nope", "new_name": "x"}, signatories),
    ("rename_struct_in_section_card", "section.card", "rename_struct_children", {"old_name": "title", "new_name": "heading"}, SECTION),
    ("rename_struct_list_new", "card.people.item", "rename_struct_children", {"old_name": "name", "new_name": "full_name"}, CARDS),
    ("rename_struct_list_old", "rows.item", "rename_struct_children", {"old_name": "label", "new_name": "caption"}, ROWS_OLD),
    ("rename_struct_list_new_rows", "rows.item", "rename_struct_children", {"old_name": "label", "new_name": "caption"}, ROWS_NEW),
    ("rename_struct_item_stream_child", "item", "rename_struct_children", {"old_name": "x", "new_name": "y"}, ITEM_CHILD),
    ("rename_struct_in_link", "section.card.links.link", "rename_struct_children", {"old_name": "url", "new_name": "href"}, SECTION),
    # remove_stream_children
    ("remove_stream_top", "", "remove_stream_children", {"name": "para"}, MIXED),
    ("remove_stream_absent", "", "remove_stream_children", {"name": "nope"}, MIXED),
    ("remove_stream_in_list_new", "section.items.item", "remove_stream_children", {"name": "quote"}, SECTION),
    ("remove_stream_in_list_old", "section.items.item", "remove_stream_children", {"name": "quote"}, SECTION_OLD_ITEMS),
    ("remove_stream_in_old_rows", "rows.item.inner", "remove_stream_children", {"name": "para"}, ROWS_OLD),
    ("remove_stream_all_signatories", "", "remove_stream_children", {"name": "signatory"}, signatories),
    # remove_struct_children
    ("remove_struct_signatories", "signatory", "remove_struct_children", {"name": "organization"}, signatories),
    ("remove_struct_absent", "signatory", "remove_struct_children", {"name": "nope"}, signatories),
    ("remove_struct_list_old", "card.people.item", "remove_struct_children", {"name": "role"}, CARDS),
    ("remove_struct_card_field", "card", "remove_struct_children", {"name": "links"}, CARDS),
    # stream_children_to_list_block
    ("to_list_top", "", "stream_children_to_list_block", {"block_name": "para", "list_block_name": "paras"}, MIXED),
    ("to_list_absent", "", "stream_children_to_list_block", {"block_name": "nope", "list_block_name": "paras"}, MIXED),
    ("to_list_section", "section", "stream_children_to_list_block", {"block_name": "para", "list_block_name": "paras"}, SECTION),
    ("to_list_signatories", "", "stream_children_to_list_block", {"block_name": "signatory", "list_block_name": "signatories"}, signatories),
    ("to_list_in_list_items", "section.items.item", "stream_children_to_list_block", {"block_name": "quote", "list_block_name": "quotes"}, SECTION),
    # stream_children_to_stream_block
    ("to_stream_top", "", "stream_children_to_stream_block", {"block_names": ["heading", "para"], "stream_block_name": "body"}, MIXED),
    ("to_stream_absent", "", "stream_children_to_stream_block", {"block_names": ["nope"], "stream_block_name": "body"}, MIXED),
    ("to_stream_into_own_name", "", "stream_children_to_stream_block", {"block_names": ["para", "quote"], "stream_block_name": "para"}, MIXED),
    ("to_stream_in_card_links", "card.links", "stream_children_to_stream_block", {"block_names": ["link"], "stream_block_name": "links"}, CARDS),
    # alter_block_value
    ("alter_signatory_organization", "signatory.organization", "alter_block_value", {"new_value": "MIT"}, signatories),
    ("alter_heading", "heading", "alter_block_value", {"new_value": "New"}, MIXED),
    ("alter_heading_same", "heading", "alter_block_value", {"new_value": "Title"}, [MIXED[0]]),
    ("alter_whole_stream", "", "alter_block_value", {"new_value": [{"type": "para", "value": "only", "id": "z"}]}, MIXED),
    ("alter_card_tags", "card.tags", "alter_block_value", {"new_value": ["a", "b"]}, CARDS),
    ("alter_tags_items_new", "tags.item", "alter_block_value", {"new_value": "x"}, TAGS_NEW),
    ("alter_tags_items_old", "tags.item", "alter_block_value", {"new_value": "x"}, TAGS_OLD),
    ("alter_tags_items_mixed_old_first", "tags.item", "alter_block_value", {"new_value": "x"}, TAGS_MIXED_OLD_FIRST),
    ("alter_tags_item_without_id", "tags.item", "alter_block_value", {"new_value": "x"}, TAGS_ITEM_WITHOUT_ID),
    ("alter_tags_items_empty", "tags.item", "alter_block_value", {"new_value": "x"}, TAGS_EMPTY),
    ("alter_to_object", "signatory.name", "alter_block_value", {"new_value": {"first": "A", "n": 1.5, "k": None}}, signatories[:1]),
    ("alter_to_null", "para", "alter_block_value", {"new_value": None}, MIXED),
    ("alter_absent_struct_key", "signatory.nope", "alter_block_value", {"new_value": "x"}, signatories),
    ("alter_deep_link_url", "section.card.links.link.url", "alter_block_value", {"new_value": "https://c.example"}, SECTION),
    ("alter_old_list_of_structs_field", "card.people.item.role", "alter_block_value", {"new_value": "reader"}, CARDS),
    # stream_children_to_struct_block
    ("to_struct_top", "", "stream_children_to_struct_block", {"block_name": "para", "struct_block_name": "para_struct"}, MIXED),
    ("to_struct_absent", "", "stream_children_to_struct_block", {"block_name": "nope", "struct_block_name": "s"}, MIXED),
    ("to_struct_signatories", "", "stream_children_to_struct_block", {"block_name": "signatory", "struct_block_name": "signatory_block"}, signatories),
    ("to_struct_own_name", "", "stream_children_to_struct_block", {"block_name": "quote", "struct_block_name": "quote"}, MIXED),
    ("to_struct_section", "section", "stream_children_to_struct_block", {"block_name": "para", "struct_block_name": "text"}, SECTION),
    # list_children_to_struct_block
    ("list_to_struct_new", "tags", "list_children_to_struct_block", {"block_name": "tag"}, TAGS_NEW),
    ("list_to_struct_old", "tags", "list_children_to_struct_block", {"block_name": "tag"}, TAGS_OLD),
    ("list_to_struct_mixed_old_first", "tags", "list_children_to_struct_block", {"block_name": "tag"}, TAGS_MIXED_OLD_FIRST),
    ("list_to_struct_without_id", "tags", "list_children_to_struct_block", {"block_name": "tag"}, TAGS_ITEM_WITHOUT_ID),
    ("list_to_struct_card_people", "card.people", "list_children_to_struct_block", {"block_name": "person"}, CARDS),
    ("list_to_struct_empty", "tags", "list_children_to_struct_block", {"block_name": "tag"}, TAGS_EMPTY),
    ("list_to_struct_absent", "tags", "list_children_to_struct_block", {"block_name": "tag"}, MIXED),
    # Shapes the operation or the walk cannot handle
    ("wrong_struct_op_on_string", "heading", "rename_struct_children", {"old_name": "a", "new_name": "b"}, MIXED),
    ("wrong_stream_op_on_struct", "signatory", "rename_stream_children", {"old_name": "a", "new_name": "b"}, signatories),
    ("wrong_path_through_string", "heading.x", "alter_block_value", {"new_value": 1}, MIXED),
    ("wrong_matching_child_without_value", "heading.x", "alter_block_value", {"new_value": 1}, [{"type": "heading", "id": "h"}]),
    ("wrong_stream_child_without_type", "", "remove_stream_children", {"name": "para"}, [{"value": "v", "id": "x"}]),
]


def run_case(name, path, op_name, args, data):
    case = {
        "name": name,
        "block_path": path,
        "operation": op_name,
        "wagtail_operation": OPERATIONS[op_name].__name__,
        "args": args,
        "input": data,
    }
    op = OPERATIONS[op_name](**args)
    # Wagtail works on its own copy; keep `input` as it was.
    copy = json.loads(json.dumps(data))
    try:
        case["output"] = apply_changes_to_raw_data(copy, path, op, STREAMFIELD)
    except Exception as e:  # noqa: BLE001 - the fixture records what Wagtail raised
        case["wagtail_error"] = f"{type(e).__name__}: {e}"
    return case


def streamfield_fixture():
    return {
        "generated_by": "tools/wagtail-fixtures/generate.py",
        "wagtail_version": wagtail.__version__,
        "django_version": django.__version__,
        "python_version": platform.python_version(),
        "cases": [run_case(*c) for c in CASES],
    }


# --- json.dumps ---------------------------------------------------------------

# JSON texts given to json.loads; each is written back by json.dumps in the
# four styles. Numbers are texts so that notations Python would not write
# (1E5, 1.50, -0) are covered too.
PYJSON_VALUES = [
    '"plain"',
    '"caf\\u00e9 na\\u00efve"',
    '"日本語のテキスト"',
    '"emoji 😀 and 🎉 and 𝄞"',
    '"\\ud83d\\ude00 escaped pair"',
    '"control \\u0000 \\u0001 \\u001f \\u007f end"',
    '"line\\nbreak\\r\\ttab\\bback\\fform"',
    '"quote \\" back \\\\ slash / solidus"',
    '"\\u2028 \\u2029 separators, \\u00a0 nbsp, \\ufeff bom, \\uffff"',
    '""',
    "[]",
    "{}",
    "[[], {}, [[]], {\"a\": {}}]",
    '{"a": 1, "b": [true, false, null], "c": {"d": "e", "ü": "ö"}}',
    '{"z": 1, "a": 2, "m": 3}',
    '{"key with \\"quotes\\"": "v", "ключ": "значение"}',
    "[0, -1, 42, 12345678901234567890, -98765432109876543210]",
    "[-0]",
    "[1.0, -1.5, 0.1, 100.0, 1e-07, 1.5e+300, 1e16, 1e15, 0.0001, 0.00001, -0.0]",
    "[1E5, 1.50, 2.5e-10, 123456789.123456789, 1e400, -1e400, 5e-324, 1.7976931348623157e308]",
    "[3.141592653589793, 2.718281828459045, 0.30000000000000004, 1e22, 1e21, 123456789012345678.0]",
    "true",
    "false",
    "null",
    "12",
    "-3.25",
    '[{"type": "para", "value": "<p>caf\\u00e9</p>", "id": "3f2b"}]',
    " [ 1 , 2 ] ",
]


def random_floats():
    """Floats of every magnitude, written with 20 significant digits (not
    Python's shortest repr), so that the fixture checks the choice of digits
    and of notation on many values; seeded, so reruns write the same file."""
    rng = random.Random(20240611)
    floats = []
    for _ in range(300):
        mantissa = rng.uniform(-10, 10)
        floats.append(mantissa * 10 ** rng.randint(-30, 30))
    floats += [rng.random() for _ in range(50)]
    floats += [float(rng.randint(-(10**18), 10**18)) for _ in range(50)]
    # Doubles whose exact value lies halfway between two shortest
    # candidates (the ulp is a quarter or an eighth here): Python rounds
    # such ties to the even digit.
    floats += [rng.randint(2**47, 2**51) + rng.choice([0.125, 0.25, 0.375, 0.75]) for _ in range(100)]
    return "[" + ", ".join("%.20g" % f for f in floats) + "]"


def pyjson_fixture():
    cases = []
    texts = PYJSON_VALUES + [SIGNATORIES, random_floats()]
    for text in texts:
        value = json.loads(text)
        for ensure_ascii in (True, False):
            for separators in ((", ", ": "), (",", ":")):
                cases.append(
                    {
                        "value": text,
                        "ensure_ascii": ensure_ascii,
                        "separators": list(separators),
                        "python_output": json.dumps(value, ensure_ascii=ensure_ascii, separators=separators),
                    }
                )
    return {
        "generated_by": "tools/wagtail-fixtures/generate.py",
        "python_version": platform.python_version(),
        "cases": cases,
    }


def write(name, data):
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {path.relative_to(ROOT)} ({len(data['cases'])} cases)", file=sys.stderr)


if __name__ == "__main__":
    write("streamfield.json", streamfield_fixture())
    write("pyjson.json", pyjson_fixture())
