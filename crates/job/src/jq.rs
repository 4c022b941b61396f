//! jq filters for the `jq` rule: compiled once when the spec is loaded,
//! run on one value at a time by the `jaq` interpreter.
//!
//! A filter is parsed and compiled with jaq's core, standard and JSON
//! definitions when the spec is validated, so a filter that does not parse
//! is refused before any row is read, and no row pays for compiling it.
//! Running it takes one value and must give exactly one value back: no
//! output, a second output or a runtime error is the row's error, never a
//! guess. Filters that read the clock, the environment or the local time
//! zone are refused: a rule must give the same result every time it runs
//! (a second run, `verify` and a revert all run it again).
//!
//! Values cross between serde_json and jaq as JSON text: jaq keeps a
//! decimal number it does not compute on as the text it read, so numbers
//! the filter leaves alone keep their digits (serde_json's own values are
//! built with `arbitrary_precision`, which jaq's serde support does not
//! read).

use std::fmt;
use std::sync::Arc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, Compiler, Ctx, ValX, Vars};
use jaq_json::Val;
use serde_json::Value;

type Data = data::JustLut<Val>;
type Compiled = jaq_core::compile::Filter<jaq_core::Native<Data>>;

/// Native filters a rule may not use: they read the clock, the
/// environment or the local time zone, so a second run, `verify` and a
/// revert would see another result. A filter naming one does not compile.
/// (`$ENV` and `input` are not defined either: no variables or inputs are
/// given to a filter.)
const LEFT_OUT: &[&str] = &["now", "env", "localtime", "strflocaltime"];

/// A compiled jq filter with its source text. Two filters are equal when
/// their sources are; cloning shares the compiled program.
#[derive(Clone)]
pub struct JqFilter {
    source: String,
    compiled: Arc<Compiled>,
}

impl fmt::Debug for JqFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JqFilter").field(&self.source).finish()
    }
}

impl PartialEq for JqFilter {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl JqFilter {
    /// Parses and compiles `source`; the error says why it does not.
    pub fn compile(source: &str) -> Result<JqFilter, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs::<Data>()
            .chain(jaq_std::funs::<Data>())
            .chain(jaq_json::funs::<Data>())
            .filter(|(name, _, _)| !LEFT_OUT.contains(name));
        let arena = Arena::default();
        let modules = Loader::new(defs)
            .load(
                &arena,
                File {
                    code: source,
                    path: (),
                },
            )
            .map_err(|errs| {
                let what: Vec<String> = errs.iter().map(|(_, e)| load_error(source, e)).collect();
                format!("the filter does not parse: {}", what.join("; "))
            })?;
        let compiled = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| {
                let what: Vec<String> = errs
                    .iter()
                    .flat_map(|(_, es)| es.iter().map(|(name, kind)| undefined(name, kind)))
                    .collect();
                format!("the filter does not compile: {}", what.join("; "))
            })?;
        Ok(JqFilter {
            source: source.to_string(),
            compiled: Arc::new(compiled),
        })
    }

    /// The filter as written in the spec.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Runs the filter on `input`: its one output, or why there is not one.
    pub fn run(&self, input: &Value) -> Result<Value, String> {
        let text = serde_json::to_string(input).map_err(|e| e.to_string())?;
        let input = jaq_json::read::parse_single(text.as_bytes())
            .map_err(|e| format!("the value cannot be given to the filter: {e}"))?;
        let ctx = Ctx::<Data>::new(&self.compiled.lut, Vars::new([]));
        let mut outputs = self.compiled.id.run((ctx, input)).map(settle);
        let first = match outputs.next() {
            None => return Err("the filter gave no output".into()),
            Some(Err(e)) => return Err(e),
            Some(Ok(v)) => v,
        };
        // A second output (or an error after the first) means the filter
        // does not describe one new value.
        match outputs.next() {
            None => {}
            Some(Ok(_)) => return Err("the filter gave more than one output".into()),
            Some(Err(e)) => return Err(format!("after its first output, {e}")),
        }
        let text = first.to_string();
        serde_json::from_str(&text)
            .map_err(|e| format!("the filter's output `{text}` is not JSON: {e}"))
    }
}

/// Where a filter stopped parsing and what it expected there.
fn load_error(source: &str, e: &jaq_core::load::Error<&str>) -> String {
    let at = |rest: &str| match source.len().saturating_sub(rest.len()) {
        n if n >= source.len() => "at the end".to_string(),
        n => format!("at byte {n}"),
    };
    let each: Vec<String> = match e {
        jaq_core::load::Error::Io(es) => es.iter().map(|(p, m)| format!("{p}: {m}")).collect(),
        jaq_core::load::Error::Lex(es) => es
            .iter()
            .map(|(x, rest)| format!("expected {} {}", x.as_str(), at(rest)))
            .collect(),
        jaq_core::load::Error::Parse(es) => es
            .iter()
            .map(|(x, rest)| format!("expected {} {}", x.as_str(), at(rest)))
            .collect(),
    };
    each.join("; ")
}

/// A name the filter uses that is not defined (or not allowed).
fn undefined(name: &str, kind: &jaq_core::compile::Undefined) -> String {
    use jaq_core::compile::Undefined;
    let what = match kind {
        Undefined::Mod => format!("module `{name}`"),
        Undefined::Var => format!("variable `{name}`"),
        Undefined::Label => format!("label `{name}`"),
        Undefined::Filter(arity) => format!("filter `{name}/{arity}`"),
        _ => format!("`{name}`"),
    };
    if LEFT_OUT.contains(&name) {
        format!("{what} is not allowed in a rule (it reads the clock, the environment or the local time zone)")
    } else {
        format!("{what} is not defined")
    }
}

/// An output, or its error as text. Not jaq's `unwrap_valr`: that ends the
/// process on `halt`, which here is one more way for a row to fail.
fn settle(v: ValX<'_, Val>) -> Result<Val, String> {
    v.map_err(|e| match e.get_err() {
        Ok(err) => format!("the filter failed: {err}"),
        Err(e) => match e.get_halt() {
            Ok(code) => format!("the filter failed: it halted (code {code})"),
            Err(_) => "the filter failed".to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn a_compiled_filter_can_be_shared_between_threads() {
        assert_send_sync::<JqFilter>();
    }

    #[test]
    fn one_output_replaces_the_value() {
        let f = JqFilter::compile(".title |= ascii_upcase").unwrap();
        assert_eq!(
            f.run(&serde_json::from_str(r#"{"title":"a","n":0.1000000000000000055}"#).unwrap())
                .unwrap()
                .to_string(),
            r#"{"title":"A","n":0.1000000000000000055}"#,
            "numbers the filter leaves alone keep their digits, keys their order"
        );
        let f = JqFilter::compile("map(select(. != null))").unwrap();
        assert_eq!(f.run(&json!([1, null, 2])).unwrap(), json!([1, 2]));
    }

    #[test]
    fn no_output_many_outputs_and_errors_are_errors() {
        let f = JqFilter::compile("empty").unwrap();
        assert!(f.run(&json!(1)).unwrap_err().contains("no output"));
        let f = JqFilter::compile(".[]").unwrap();
        assert!(f
            .run(&json!([1, 2]))
            .unwrap_err()
            .contains("more than one output"));
        let f = JqFilter::compile(".a + 1").unwrap();
        assert!(f.run(&json!({"a": "x"})).unwrap_err().contains("failed"));
        let f = JqFilter::compile("error(\"boom\")").unwrap();
        assert!(f.run(&json!(1)).unwrap_err().contains("boom"));
        // `halt` fails the value; it never ends the process.
        for halting in ["halt", "halt_error", "halt_error(3)"] {
            let f = JqFilter::compile(halting).unwrap();
            assert!(
                f.run(&json!("x")).unwrap_err().contains("failed"),
                "{halting}"
            );
        }
    }

    #[test]
    fn a_filter_that_does_not_parse_or_compile_is_refused() {
        assert!(JqFilter::compile(".a |").is_err());
        assert!(JqFilter::compile("no_such_function(1)").is_err());
        for impure in [
            "now",
            "env.HOME",
            "$ENV.HOME",
            "input",
            "localtime",
            "mktime | strflocaltime(\"%H\")",
        ] {
            assert!(JqFilter::compile(impure).is_err(), "{impure}");
        }
        assert!(JqFilter::compile("todate | fromdate").is_ok());
        let e = JqFilter::compile(".a |").unwrap_err();
        assert!(
            e.contains("does not parse") && e.contains("at the end"),
            "{e}"
        );
        let e = JqFilter::compile("now").unwrap_err();
        assert!(e.contains("`now/0` is not allowed"), "{e}");
        let e = JqFilter::compile("frobnicate(1)").unwrap_err();
        assert!(e.contains("`frobnicate/1` is not defined"), "{e}");
        assert_eq!(
            JqFilter::compile(".a").unwrap(),
            JqFilter::compile(".a").unwrap()
        );
    }
}
