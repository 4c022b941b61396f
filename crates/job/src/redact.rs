//! Hiding credentials in connection URLs, for every log line and error
//! message.
//!
//! A secret can sit in the userinfo (`postgres://user:pass@host/db`,
//! `amqp://user:pass@host/vhost`), in a query parameter
//! (`?password=…`, `?sslpassword=…`, any key that names a password, token,
//! secret or key), or, for a libpq-style `key=value` string, in a pair. The
//! parse is deliberately forgiving: operators type passwords with `@`, `/`,
//! `?` or `#` unencoded, and when in doubt more is hidden, never less.
//! [`redact_url`] masks a URL for display; [`url_secrets`] lists the secret
//! strings themselves so that text which quotes them some other way (a driver
//! error echoing the URL) can be [`scrub`]bed.

use std::ops::Range;

/// What a hidden secret is replaced with.
pub const MASK: &str = "***";

/// Query keys (lower-cased, percent-decoded) holding a secret contain one of
/// these: `password`, `sslpassword`, `pass`, `passwd`, `pwd`, `secret`,
/// `client_secret`, `token`, `access_token`, `key`, `api_key`, `credential`…
const SECRET_KEY_PARTS: [&str; 6] = ["pass", "pwd", "secret", "token", "key", "credential"];

/// True when a query or `key=value` key names a secret.
pub fn is_secret_key(key: &str) -> bool {
    let k = percent_decode(key).to_ascii_lowercase();
    SECRET_KEY_PARTS.iter().any(|p| k.contains(p))
}

/// The URL with every secret replaced by [`MASK`]; the user, host, port,
/// path and other parameters stay, so the message still says where.
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut at = 0;
    for span in secret_spans(url) {
        out.push_str(&url[at..span.start]);
        out.push_str(MASK);
        at = span.end;
    }
    out.push_str(&url[at..]);
    out
}

/// The secrets of a URL as they may appear in other text: as written and
/// percent-decoded. Empty secrets are left out.
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    for span in secret_spans(url) {
        let raw = &url[span];
        if raw.is_empty() {
            continue;
        }
        out.push(raw.to_string());
        let decoded = percent_decode(raw);
        if decoded != raw {
            out.push(decoded.clone());
        }
        // Query values may encode a space as `+`.
        if raw.contains('+') {
            out.push(percent_decode(&raw.replace('+', " ")));
        }
    }
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

/// `text` with every occurrence of the given secrets replaced by [`MASK`],
/// longest first (so a secret containing another is hidden whole).
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut sorted: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for s in sorted {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    out
}

/// `text` (an error message, say) with the secrets of `url` hidden.
pub fn redact_text(text: &str, url: &str) -> String {
    scrub(text, &url_secrets(url))
}

/// An error's text, causes included, with the secrets of a URL hidden: what
/// a driver's connect error becomes before it is shown (drivers may quote
/// the URL they were given, e.g. "Invalid URL: '…'").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RedactedError(String);

impl RedactedError {
    pub fn new(err: &(dyn std::error::Error + 'static), url: &str) -> RedactedError {
        let mut text = err.to_string();
        let mut cause = err.source();
        while let Some(c) = cause {
            let c_text = c.to_string();
            if !text.contains(&c_text) {
                text.push_str(": ");
                text.push_str(&c_text);
            }
            cause = c.source();
        }
        RedactedError(redact_text(&text, url))
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

/// Byte ranges of the secrets in `url`, in order, not overlapping.
fn secret_spans(url: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let Some(scheme_end) = scheme_len(url) else {
        // Not a URL: a libpq-style `host=… password=…` string, or anything.
        pair_spans(url, 0, &[' ', '\t', '\n', '&', ';', '?'], &mut spans);
        return spans;
    };
    let after_colon = scheme_end + 1;
    let (body_start, hierarchical) = if url[after_colon..].starts_with("//") {
        (after_colon + 2, true)
    } else {
        (after_colon, false)
    };
    let body = &url[body_start..];
    // The userinfo ends at the last `@` before the query; when there is no
    // `@` there, at the last `@` at all (a password holding a raw `?`).
    let query_at = body.find('?').unwrap_or(body.len());
    let at = body[..query_at].rfind('@').or_else(|| body.rfind('@'));
    let rest_start = match at {
        Some(at) => {
            let userinfo = &body[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    spans.push(body_start + colon + 1..body_start + at);
                }
                // `scheme:user@host` without `//` is ambiguous (the
                // "user" may be a password); hide it.
                None if !hierarchical => spans.push(body_start..body_start + at),
                None => {}
            }
            body_start + at + 1
        }
        None => body_start,
    };
    if let Some(q) = url[rest_start..].find('?') {
        pair_spans(
            &url[rest_start + q + 1..],
            rest_start + q + 1,
            &['&', ';'],
            &mut spans,
        );
    }
    spans
}

/// The length of a URL scheme at the start of `s` (RFC 3986: a letter, then
/// letters, digits, `+`, `-`, `.`), when `s` has one followed by `:`.
fn scheme_len(s: &str) -> Option<usize> {
    let colon = s.find(':')?;
    let scheme = &s[..colon];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)))
        .then_some(colon)
}

/// Spans of the values of secret `key=value` pairs in `s` (which starts at
/// `offset` of the whole string), pairs separated by any of `seps`. A value
/// in single quotes (libpq) runs to the closing quote, separators included.
fn pair_spans(s: &str, offset: usize, seps: &[char], spans: &mut Vec<Range<usize>>) {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < s.len() {
        // Skip separators to the start of a pair.
        if s[i..].starts_with(seps) {
            i += s[i..].chars().next().map_or(1, char::len_utf8);
            continue;
        }
        let end_of_token = |from: usize| {
            s[from..]
                .find(|c: char| seps.contains(&c))
                .map_or(s.len(), |e| from + e)
        };
        let token_end = end_of_token(i);
        let Some(eq) = s[i..token_end].find('=').map(|e| i + e) else {
            i = token_end;
            continue;
        };
        let value_start = eq + 1;
        let value_end = if bytes.get(value_start) == Some(&b'\'') {
            // Up to the closing quote; `\'` escapes one.
            let mut j = value_start + 1;
            while j < s.len() && bytes[j] != b'\'' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            // Past the quote; a `\` before a multi-byte character may have
            // stepped into it, so realign to a character boundary.
            let mut end = (j + 1).min(s.len());
            while !s.is_char_boundary(end) {
                end += 1;
            }
            end
        } else {
            token_end
        };
        if is_secret_key(s[i..eq].trim()) {
            spans.push(offset + value_start..offset + value_end);
        }
        i = value_end.max(i + 1);
        while i < s.len() && !s.is_char_boundary(i) {
            i += 1;
        }
    }
}

/// Percent-decodes `s`; invalid escapes stay as written, invalid UTF-8 is
/// replaced.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_passwords_are_hidden() {
        for (url, shown) in [
            (
                "postgres://u:secret@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            (
                "amqps://w:pw@mq.example:5671/prod",
                "amqps://w:***@mq.example:5671/prod",
            ),
            // `@`, `:`, `/`, `?` and `#` in the password, unencoded.
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p:a:ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p/ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p?ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p#ss@h/db", "postgres://u:***@h/db"),
            // Percent-encoded.
            ("postgres://u:p%40ss%2Fw@h/db", "postgres://u:***@h/db"),
            // An empty password still hides that it is empty.
            ("postgres://u:@h/db", "postgres://u:***@h/db"),
            // `@` in the query does not move the userinfo.
            (
                "postgres://u:pw@h/db?sslrootcert=/c/a@b.pem",
                "postgres://u:***@h/db?sslrootcert=/c/a@b.pem",
            ),
            // Without `//` the part before `@` may be a password.
            ("amqp:guest:SECRET@h/%2f", "amqp:guest:***@h/%2f"),
            ("amqp:SECRET@h", "amqp:***@h"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn urls_without_secrets_are_unchanged() {
        for url in [
            "postgres://h/db",
            "postgres://u@h/db",
            "postgres://postgres@127.0.0.1:5432/postgres",
            "sqlite://./demo.db?mode=rwc",
            "sqlite::memory:",
            "amqp://127.0.0.1:5672/%2f?heartbeat=30&auth_mechanism=plain",
            "not a url",
            "",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn secret_query_parameters_are_hidden() {
        for (url, shown) in [
            (
                "postgres://postgres@127.0.0.1:5432/db?password=hunter2",
                "postgres://postgres@127.0.0.1:5432/db?password=***",
            ),
            (
                "postgres://u@h/db?sslmode=require&sslpassword=k3y&application_name=x",
                "postgres://u@h/db?sslmode=require&sslpassword=***&application_name=x",
            ),
            (
                "postgres://u:a@h/db?PASSWORD=b&Token=c;api_key=d&pwd=e&client_secret=f",
                "postgres://u:***@h/db?PASSWORD=***&Token=***;api_key=***&pwd=***&client_secret=***",
            ),
            // A percent-encoded key, a value holding `=` and `#`.
            (
                "postgres://h/db?pass%77ord=a=b#c&x=1",
                "postgres://h/db?pass%77ord=***&x=1",
            ),
            (
                "amqp://guest@h/%2f?heartbeat=10&password=s",
                "amqp://guest@h/%2f?heartbeat=10&password=***",
            ),
            ("sqlite://x.db?key=abc", "sqlite://x.db?key=***"),
            // `?` inside the password and a query after it.
            (
                "postgres://u:p?w@h/db?password=q",
                "postgres://u:***@h/db?password=***",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn key_value_strings_are_hidden() {
        assert_eq!(
            redact_url("host=db user=app password=hunter2 dbname=x"),
            "host=db user=app password=*** dbname=x"
        );
        assert_eq!(
            redact_url("host=db password='a b\\' c' sslmode=require"),
            "host=db password=*** sslmode=require"
        );
        assert_eq!(redact_url("password=é€x"), "password=***");
    }

    #[test]
    fn secrets_are_listed_raw_and_decoded() {
        let s = url_secrets("postgres://u:p%40ss@h/db?sslpassword=a+b&password=c%26d");
        for want in ["p%40ss", "p@ss", "a+b", "a b", "c%26d", "c&d"] {
            assert!(s.contains(&want.to_string()), "{want} in {s:?}");
        }
        assert!(url_secrets("postgres://u@h/db").is_empty());
        assert!(url_secrets("postgres://u:@h/db").is_empty());
    }

    #[test]
    fn text_quoting_a_url_is_scrubbed() {
        let url = "amqp:guest:SECRETamqp@h";
        let err = format!("Invalid URL: '{url}'");
        assert_eq!(redact_text(&err, url), "Invalid URL: 'amqp:guest:***@h'");
        let url = "postgres://u:p%40ss@h/db";
        assert_eq!(
            redact_text("auth failed for p@ss and p%40ss", url),
            "auth failed for *** and ***"
        );
        // Longest first: a secret holding another is hidden whole.
        assert_eq!(
            scrub("abcdef abc", &["abc".into(), "abcdef".into()]),
            "*** ***"
        );
        assert_eq!(scrub("x", &[String::new()]), "x");
    }

    #[test]
    fn redacted_errors_keep_their_causes_without_the_secret() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot parse")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("bad url postgres://u:SEKRIT@h"));
        let r = RedactedError::new(&e, "postgres://u:SEKRIT@h");
        assert_eq!(r.message(), "cannot parse: bad url postgres://u:***@h");
    }
}
