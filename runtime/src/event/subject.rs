//! NATS subject syntax: validation and wildcard matching.
//!
//! Subjects are dot-separated tokens; `*` matches one token and `>` (last
//! token only) matches one or more. The host checks every emitted event's
//! destination against the manifest's `publish` patterns with [`matches`].

use anyhow::{Result, bail};

/// Checks that `subject` is a well-formed subject or wildcard pattern.
pub fn validate(subject: &str) -> Result<()> {
    if subject.is_empty() {
        bail!("subject is empty");
    }
    if subject.chars().any(char::is_whitespace) {
        bail!("subject contains whitespace");
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            bail!("subject has an empty token");
        }
        if *token == ">" && i + 1 != tokens.len() {
            bail!("`>` may only be the last token");
        }
        if token.len() > 1 && (token.contains('*') || token.contains('>')) {
            bail!("wildcards must be whole tokens, not part of {token:?}");
        }
    }
    Ok(())
}

/// Whether a concrete `subject` matches `pattern`.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut subject = subject.split('.');
    loop {
        match (pattern.next(), subject.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every subject `pattern` matches is also matched by `wider`:
/// a stream capturing `wider` holds all of `pattern`'s messages.
pub fn covers(wider: &str, pattern: &str) -> bool {
    let mut wider = wider.split('.');
    let mut pattern = pattern.split('.');
    loop {
        match (wider.next(), pattern.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(p)) if p != ">" => {}
            (Some(w), Some(p)) if w == p && w != "*" && w != ">" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `subject` is concrete: valid, and without wildcards.
pub fn is_concrete(subject: &str) -> bool {
    validate(subject).is_ok() && !subject.split('.').any(|t| t == "*" || t == ">")
}

/// Durable consumer names end up in subjects, so they cannot hold subject
/// syntax or whitespace.
pub fn validate_consumer_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!("{name:?} is not a valid consumer name (letters, digits, `-`, `_`)");
    }
    Ok(())
}

/// A token that can stand in a consumer name for `subject`.
pub fn to_name_token(subject: &str) -> String {
    subject
        .chars()
        .map(|c| match c {
            '*' => 'S',
            '>' => 'G',
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => c,
            _ => '_',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches("*.b.>", "x.b.y.z"));
        assert!(!matches("a.b.c", "a.b"));
    }

    #[test]
    fn rejects_malformed_subjects() {
        for bad in ["", "a..b", ".a", "a.", "a b", "a.>.b", "a.b*", "a.>x"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "a.b", "a.*", "a.>", ">", "orders.created"] {
            validate(good).unwrap();
        }
    }

    #[test]
    fn wider_patterns_cover_narrower_ones() {
        assert!(covers("accounts.>", "accounts.events.*"));
        assert!(covers("accounts.events.*", "accounts.events.*"));
        assert!(covers("accounts.*.*", "accounts.events.a1"));
        assert!(!covers("accounts.events.*", "accounts.>"));
        assert!(!covers("accounts.*", "accounts.events.*"));
        assert!(!covers("orders.>", "accounts.events.a1"));
        assert!(is_concrete("accounts.events.a1"));
        assert!(!is_concrete("accounts.events.*"));
    }

    #[test]
    fn consumer_names() {
        validate_consumer_name("payment_v2-x").unwrap();
        for bad in ["", "a.b", "a b", "a*", "a>"] {
            assert!(validate_consumer_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(to_name_token("orders.*.>"), "orders_S_G");
    }
}
