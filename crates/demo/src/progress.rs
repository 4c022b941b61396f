//! How far a generation has come, for a caller that shows progress: the
//! certificate-page revisions ([`crate::generate_certificates`]) or the
//! collections ([`crate::generate_collections`]) stored so far by this
//! process, counted once their batch is in the database.

use std::sync::atomic::{AtomicU64, Ordering};

static STORED: AtomicU64 = AtomicU64::new(0);

/// Revisions or collections stored so far by the generators of this
/// process, all runs together: a caller following one generation reads the
/// count before it starts and subtracts it.
pub fn stored() -> u64 {
    STORED.load(Ordering::Relaxed)
}

/// Counts `n` more stored.
pub(crate) fn add(n: usize) {
    STORED.fetch_add(n as u64, Ordering::Relaxed);
}
