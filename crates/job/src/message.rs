//! Messages on the queue. They carry references, never the plan: a task names
//! a run and a shard; the mapper reads the run's spec, scope and mode from the
//! ledger. A malformed message is refused with an error naming what it is.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::tally::Tally;

/// The message format version, so a future change can be told apart.
pub const MESSAGE_VERSION: u8 = 1;

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what} message: {source}")]
pub struct MessageError {
    pub what: &'static str,
    #[source]
    pub source: serde_json::Error,
}

/// A message as it travels (JSON).
fn encode<M: Serialize>(message: &M) -> Vec<u8> {
    serde_json::to_vec(message).unwrap_or_default()
}

/// The message `bytes` hold; a malformed one is an error naming `what` it is.
fn decode<M: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<M, MessageError> {
    serde_json::from_slice(bytes).map_err(|source| MessageError { what, source })
}

/// "Process shard N of run R": the rows of the shard are in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardTask {
    pub v: u8,
    /// The ledger (database) the message belongs to; a worker of another
    /// ledger returns it to the queue untouched. Empty in messages written
    /// before ledgers had an identity, which any worker may take.
    #[serde(default)]
    pub ledger: String,
    pub run_id: String,
    pub shard_no: u32,
    pub target: String,
    /// First and last key of the shard, for people reading logs and queues.
    pub first_key: String,
    pub last_key: String,
    pub rows: u32,
}

impl ShardTask {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
    pub fn decode(bytes: &[u8]) -> Result<ShardTask, MessageError> {
        decode(bytes, "shard task")
    }
}

/// What a mapper did with a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardResult {
    pub v: u8,
    /// The ledger (database) the message belongs to; a worker of another
    /// ledger returns it to the queue untouched. Empty in messages written
    /// before ledgers had an identity, which any worker may take.
    #[serde(default)]
    pub ledger: String,
    pub run_id: String,
    pub shard_no: u32,
    pub target: String,
    /// The worker that committed the shard.
    pub worker: String,
    pub elapsed_ms: u64,
    pub tally: Tally,
}

impl ShardResult {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
    pub fn decode(bytes: &[u8]) -> Result<ShardResult, MessageError> {
        decode(bytes, "shard result")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_round_trip_and_refusal() {
        let t = ShardTask {
            v: MESSAGE_VERSION,
            ledger: "l1".into(),
            run_id: "r1".into(),
            shard_no: 3,
            target: "revisions".into(),
            first_key: "10".into(),
            last_key: "20".into(),
            rows: 11,
        };
        assert_eq!(ShardTask::decode(&t.encode()).unwrap(), t);
        let e = ShardTask::decode(b"{\"run_id\":1}").unwrap_err();
        assert!(
            e.to_string().starts_with("malformed shard task message"),
            "{e}"
        );
        assert!(ShardTask::decode(b"not json").is_err());
    }

    #[test]
    fn result_round_trip() {
        let r = ShardResult {
            v: MESSAGE_VERSION,
            ledger: "l1".into(),
            run_id: "r1".into(),
            shard_no: 0,
            target: "t".into(),
            worker: "w".into(),
            elapsed_ms: 5,
            tally: Tally::default(),
        };
        assert_eq!(ShardResult::decode(&r.encode()).unwrap(), r);
        assert!(ShardResult::decode(b"[]")
            .unwrap_err()
            .to_string()
            .contains("shard result"));
    }
}
