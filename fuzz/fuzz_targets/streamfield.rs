//! One of the nine StreamField operations on any block path and raw value.
//!
//! The input is text in lines: the first character of line 1 picks the
//! operation (its byte modulo 9), line 2 is the block path, lines 3 and 4
//! the operation's arguments (block names; for `stream_children_to_stream_block`
//! line 3 is a comma-separated list; for `alter_block_value` line 3 is the
//! new value as JSON), and the rest is the raw data as JSON.
//!
//! Never panics; an error or `Ok(false)` leaves the raw data as it was.
#![no_main]

use backfill_job::streamfield::{
    apply_changes_to_raw_data, BlockPath, StreamOperation, OPERATION_NAMES,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(5, '\n');
    let pick = lines.next().unwrap_or("").bytes().next().unwrap_or(0);
    let name = OPERATION_NAMES[usize::from(pick) % OPERATION_NAMES.len()];
    let path_text = lines.next().unwrap_or("");
    let first = lines.next().unwrap_or("");
    let second = lines.next().unwrap_or("");
    let raw_text = lines.next().unwrap_or("");

    let path = match BlockPath::parse(path_text) {
        Ok(path) => {
            assert_eq!(path.to_string(), path_text);
            path
        }
        Err(_) => return,
    };
    let s = |t: &str| Value::String(t.to_string());
    let mut args = Map::new();
    match name {
        "rename_stream_children" | "rename_struct_children" => {
            args.insert("old_name".into(), s(first));
            args.insert("new_name".into(), s(second));
        }
        "remove_stream_children" | "remove_struct_children" => {
            args.insert("name".into(), s(first));
        }
        "stream_children_to_list_block" => {
            args.insert("block_name".into(), s(first));
            args.insert("list_block_name".into(), s(second));
        }
        "stream_children_to_stream_block" => {
            let names = first.split(',').map(s).collect();
            args.insert("block_names".into(), Value::Array(names));
            args.insert("stream_block_name".into(), s(second));
        }
        "alter_block_value" => {
            let new_value = serde_json::from_str(first).unwrap_or_else(|_| s(first));
            args.insert("new_value".into(), new_value);
        }
        "stream_children_to_struct_block" => {
            args.insert("block_name".into(), s(first));
            args.insert("struct_block_name".into(), s(second));
        }
        "list_children_to_struct_block" => {
            args.insert("block_name".into(), s(first));
        }
        other => unreachable!("{other}"),
    }
    let Ok(op) = StreamOperation::parse(name, &args) else {
        return;
    };
    assert_eq!(op.name(), name);
    let Ok(mut raw) = serde_json::from_str::<Value>(raw_text) else {
        return;
    };
    let before = raw.clone();
    let mut n = 0u32;
    let mut ids = || {
        n += 1;
        format!("id-{n}")
    };
    match apply_changes_to_raw_data(&mut raw, &path, &op, &mut ids) {
        Ok(true) => {}
        Ok(false) => assert_eq!(raw, before, "unchanged, yet written"),
        Err(_) => assert_eq!(raw, before, "refused, yet written"),
    }
});
