//! The row a dialect reads a before-image from, as [`crate::audit`] turns
//! it into one.

/// A before-image as stored: (key, column, before, patch, after version).
pub(crate) type RawImage = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);
