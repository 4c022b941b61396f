//! The error of a spec that cannot be run: the field it is about (as a
//! path such as `targets[0].rules[1].path`, or a flag such as `--param
//! key`) and what is wrong with it. Loading a spec stops at the first.

/// A bad spec: the field it is about and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}
