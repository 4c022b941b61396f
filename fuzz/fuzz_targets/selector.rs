//! A selector from the first line of the input, applied to the JSON document
//! in the rest of it (or to a certificate page revision when the rest is not
//! JSON). Parsing and selecting never panic, and every place selected is the
//! JSON Pointer of a node that exists, given once.
#![no_main]

use backfill_job::select::Selector;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::collections::HashSet;

const REVISION: &str = include_str!("../seeds/revision.json");

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (source, rest) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(selector) = Selector::parse(source) else {
        return;
    };
    assert_eq!(selector.source(), source);
    let doc: Value = match serde_json::from_str(rest) {
        Ok(doc) => doc,
        Err(_) => serde_json::from_str(REVISION).expect("the revision seed is JSON"),
    };
    let places = selector.places(&doc);
    let mut seen = HashSet::new();
    for place in &places {
        assert!(
            doc.pointer(place).is_some(),
            "{source}: {place} is not in the document"
        );
        assert!(seen.insert(place), "{source}: {place} given twice");
    }
});
