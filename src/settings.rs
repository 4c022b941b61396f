//! Connection settings in one typed struct, from flags, the environment
//! (`DATABASE_URL`, `AMQP_URL`, `BACKFILL_QUEUE_PREFIX`) and an optional TOML
//! file (`--config`), in that order of precedence. Secrets never print: the
//! URLs are wrapped so `Debug` and `Display` show them redacted, and every
//! URL's secrets are remembered so that log lines and error messages (which
//! may quote a driver's text) are scrubbed of them before they are written.

use serde::Deserialize;
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_QUEUE_PREFIX: &str = "backfill";

/// A URL that may hold a password; prints redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: String) -> Self {
        remember_secrets(&url);
        SecretUrl(url)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&backfill_job::redact::redact_url(&self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&backfill_job::redact::redact_url(&self.0))
    }
}

/// The secrets of every URL this process was given: what [`scrub`] hides.
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Secrets shorter than this are not searched for in free text: replacing
/// every `x` of a log line hides nothing worth hiding and garbles the line.
/// The URLs themselves are always shown redacted, whatever the length.
const MIN_SCRUBBED_LEN: usize = 4;

fn remember_secrets(url: &str) {
    let mut found = backfill_job::redact::url_secrets(url);
    found.retain(|s| s.chars().count() >= MIN_SCRUBBED_LEN);
    if found.is_empty() {
        return;
    }
    if let Ok(mut known) = SECRETS.lock() {
        for s in found {
            if !known.contains(&s) {
                known.push(s);
            }
        }
    }
}

/// `text` with the secrets of every URL this process was given hidden.
/// The last line of defence: a library's error or log line may quote a URL
/// or a password in a way no redaction of ours formatted.
pub fn scrub(text: &str) -> String {
    match SECRETS.lock() {
        Ok(known) if !known.is_empty() => backfill_job::redact::scrub(text, &known),
        _ => text.to_string(),
    }
}

/// The log writer: stderr (above the progress bar, if one is drawn), each event scrubbed by [`scrub`] (sqlx, for one,
/// logs an unrecognised connect parameter with its value at `warn`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ScrubbedStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ScrubbedStderr {
    type Writer = ScrubbedStderr;
    fn make_writer(&'a self) -> Self::Writer {
        ScrubbedStderr
    }
}

impl std::io::Write for ScrubbedStderr {
    /// The formatter hands over one whole event per write, so a secret is
    /// never split across two calls.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = scrub(&String::from_utf8_lossy(buf));
        // Above the progress bar when one is drawn, so no line tears it.
        crate::progress::print_above(text.as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The optional settings file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    database_url: Option<String>,
    amqp_url: Option<String>,
    queue_prefix: Option<String>,
}

/// Where to connect.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: SecretUrl,
    pub amqp_url: SecretUrl,
    pub queue_prefix: String,
    /// Who is acting, for the ledger's audit events (`--operator`,
    /// `BACKFILL_OPERATOR`, else the OS user); set by the command line.
    pub operator: String,
    /// Whether the prefix was given (flag, environment or file). When not,
    /// the queues are named after the ledger once the store is connected
    /// (see [`Settings::use_ledger`]), so two databases never share queues
    /// unless told to.
    pub queue_prefix_given: bool,
    /// The ledger's prefix, set once a store is connected.
    pub ledger_prefix: std::sync::Arc<std::sync::OnceLock<String>>,
}

impl Settings {
    /// Flags and environment (already merged by clap) win over the file,
    /// which wins over the defaults.
    pub fn resolve(
        database_url: Option<String>,
        amqp_url: Option<String>,
        queue_prefix: Option<String>,
        file: Option<&Path>,
    ) -> anyhow::Result<Settings> {
        let file_settings = match file {
            None => FileSettings::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    anyhow::anyhow!("cannot read settings file {}: {e}", p.display())
                })?;
                toml::from_str(&text).map_err(|e| {
                    anyhow::anyhow!("settings file {}: {}", p.display(), e.message())
                })?
            }
        };
        let given = queue_prefix.or(file_settings.queue_prefix);
        let queue_prefix_given = given.is_some();
        let prefix = given.unwrap_or_else(|| DEFAULT_QUEUE_PREFIX.to_string());
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            anyhow::bail!("queue prefix `{prefix}` must be letters, digits, `-`, `_` or `.`");
        }
        Ok(Settings {
            operator: String::new(),
            queue_prefix_given,
            ledger_prefix: Default::default(),
            database_url: SecretUrl::new(
                database_url
                    .or(file_settings.database_url)
                    .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string()),
            ),
            amqp_url: SecretUrl::new(
                amqp_url
                    .or(file_settings.amqp_url)
                    .unwrap_or_else(|| DEFAULT_AMQP_URL.to_string()),
            ),
            queue_prefix: prefix,
        })
    }

    /// True for the embedded SQLite back end.
    pub fn is_sqlite(&self) -> bool {
        self.database_url.expose().starts_with("sqlite:")
    }

    /// Names the queues after the connected store's ledger when no prefix
    /// was given.
    pub fn use_ledger(&self, ledger: &backfill_store::LedgerIdentity) {
        let _ = self.ledger_prefix.set(ledger.queue_prefix());
    }

    /// The prefix in use: the one given, else the ledger's
    /// (`backfill-<12 hex digits of its id>`) once a store is connected.
    pub fn prefix(&self) -> &str {
        match self.ledger_prefix.get() {
            Some(p) if !self.queue_prefix_given => p,
            _ => &self.queue_prefix,
        }
    }

    pub fn queues(&self) -> backfill_queue::QueueNames {
        backfill_queue::QueueNames::with_prefix(self.prefix())
    }

    /// Where a coordinator publishes shards while it plans them.
    pub fn publishing(&self) -> backfill_coordinator::Publishing {
        backfill_coordinator::Publishing {
            amqp_url: self.amqp_url.expose().to_string(),
            queues: self.queues(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug() {
        let resolve = |database: &str, amqp: &str| {
            Settings::resolve(Some(database.into()), Some(amqp.into()), None, None).unwrap()
        };
        let s = resolve("postgres://u:hunter2@db/x", "amqp://w:hunter3@mq/%2f");
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );
        assert_eq!(s.database_url.expose(), "postgres://u:hunter2@db/x");
        assert_eq!(s.queue_prefix, "backfill");
        let s = resolve(
            "postgres://u@db/x?sslpassword=hunter4",
            "amqps://w@mq/%2f?password=hunter5",
        );
        let shown = format!("{s:?} {} {}", s.database_url, s.amqp_url);
        assert!(
            !shown.contains("hunter4") && !shown.contains("hunter5"),
            "{shown}"
        );
        // Text quoting them some other way is scrubbed too; a one-letter
        // "password" is not searched for in free text.
        let _ = SecretUrl::new("amqp://u:x@mq/%2f".into());
        assert_eq!(scrub("x marks"), "x marks");
        assert_eq!(
            scrub("ignoring key=sslpassword value=hunter4; hunter5"),
            "ignoring key=sslpassword value=***; ***"
        );
        assert!(
            !s.queue_prefix_given,
            "no prefix given: named after the ledger"
        );
        s.ledger_prefix.set("backfill-0123456789ab".into()).unwrap();
        assert_eq!(s.queues().tasks, "backfill-0123456789ab.tasks");
        let given = Settings::resolve(None, None, Some("team".into()), None).unwrap();
        given
            .ledger_prefix
            .set("backfill-0123456789ab".into())
            .unwrap();
        assert_eq!(given.queues().tasks, "team.tasks", "a given prefix wins");
    }

    #[test]
    fn file_fills_what_flags_leave() {
        let dir = std::env::temp_dir().join(format!("backfill-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.toml");
        std::fs::write(
            &p,
            "database_url = \"postgres://f/db\"\nqueue_prefix = \"q1\"\n",
        )
        .unwrap();
        let s = Settings::resolve(None, Some("amqp://x/%2f".into()), None, Some(&p)).unwrap();
        assert_eq!(s.database_url.expose(), "postgres://f/db");
        assert_eq!(s.amqp_url.expose(), "amqp://x/%2f");
        assert_eq!(s.queue_prefix, "q1");
        std::fs::write(&p, "colour = 1\n").unwrap();
        assert!(Settings::resolve(None, None, None, Some(&p)).is_err());
        assert!(Settings::resolve(None, None, Some("bad prefix".into()), None).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
