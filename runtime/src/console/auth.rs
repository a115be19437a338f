//! Who may act through the console (replay, purge), and the checks that
//! keep another site from acting in their name.
//!
//! Reading needs nothing. An action needs an operator token: named
//! secrets given to the process that serves the console (a file of
//! `name:token` lines, or one in the environment), never to a manifest.
//! The page sends the token in an `Authorization: Bearer` header it sets
//! itself; a browser never adds that header on its own, so a form or a
//! script on another site cannot make an action happen (there is no cookie
//! to ride on). As a second wall, an action whose `Origin` or
//! `Sec-Fetch-Site` says it came from another site is refused, and only
//! JSON bodies are accepted, which a plain cross-site form cannot send.
//! Tokens are kept and compared as SHA-256 digests.

use std::fmt;
use std::path::Path;

use axum::http::{HeaderMap, StatusCode, header};
use sha2::{Digest, Sha256};

/// The shortest token accepted: long enough not to be guessed.
const MIN_TOKEN_LEN: usize = 16;

/// The operators who may act, by name.
#[derive(Clone, Default)]
pub struct Tokens {
    digests: Vec<(String, [u8; 32])>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.digests.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Tokens").field("names", &names).finish()
    }
}

/// Why a token file or variable was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the console tokens file {path}: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: expected `name:token`")]
    Malformed { origin: String },
    #[error(
        "{origin}: the operator name {name:?} must be 1 to 64 letters, digits, `-`, `_` or `.`"
    )]
    BadName { origin: String, name: String },
    #[error("{origin}: {name}'s token is shorter than {MIN_TOKEN_LEN} characters")]
    TooShort { origin: String, name: String },
    #[error("{origin}: {name}'s token must be visible ASCII characters only (no spaces)")]
    NotVisibleAscii { origin: String, name: String },
    #[error("{origin}: the operator {name} is named twice")]
    Repeated { origin: String, name: String },
}

/// An operator, known by a token: who an action is logged as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator(pub String);

/// Why an action was refused, and what the caller is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "actions are off: no operator token was given to this console (see docs/operations/console.md)"
    )]
    ActionsOff,
    #[error("an action needs an operator token (Authorization: Bearer …)")]
    NoToken,
    #[error("this operator token is not known")]
    UnknownToken,
    #[error("refused: the request came from another site")]
    CrossSite,
    #[error("an action's body must be JSON (Content-Type: application/json)")]
    NotJson,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::NoToken | Refusal::UnknownToken => StatusCode::UNAUTHORIZED,
            Refusal::ActionsOff | Refusal::CrossSite => StatusCode::FORBIDDEN,
            Refusal::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }
}

impl Tokens {
    /// Reads `file` (one `name:token` per line; `#` comments and blank
    /// lines skipped) and `variable` (one `name:token`), either optional.
    pub fn load(file: Option<&Path>, variable: Option<&str>) -> Result<Self, TokenError> {
        let mut tokens = Tokens::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| TokenError::Unreadable {
                path: path.display().to_string(),
                source,
            })?;
            for (number, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let origin = format!("{} line {}", path.display(), number + 1);
                tokens.add(line, origin)?;
            }
        }
        if let Some(value) = variable.filter(|v| !v.is_empty()) {
            tokens.add(value, "EVENTHOST_CONSOLE_TOKEN".into())?;
        }
        Ok(tokens)
    }

    fn add(&mut self, line: &str, origin: String) -> Result<(), TokenError> {
        let Some((name, token)) = line.split_once(':') else {
            return Err(TokenError::Malformed { origin });
        };
        let (name, token) = (name.trim().to_string(), token.trim());
        let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if name.is_empty() || name.len() > 64 || !name.chars().all(allowed) {
            return Err(TokenError::BadName { origin, name });
        }
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort { origin, name });
        }
        // A browser sends headers as visible ASCII only.
        if !token.chars().all(|c| c.is_ascii_graphic()) {
            return Err(TokenError::NotVisibleAscii { origin, name });
        }
        if self.digests.iter().any(|(known, _)| *known == name) {
            return Err(TokenError::Repeated { origin, name });
        }
        self.digests.push((name, digest(token)));
        Ok(())
    }

    /// Whether any operator may act.
    pub fn any(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Names the operator behind an action's request, or says why not.
    pub fn authorise(&self, headers: &HeaderMap) -> Result<Operator, Refusal> {
        if !self.any() {
            return Err(Refusal::ActionsOff);
        }
        if from_another_site(headers) {
            return Err(Refusal::CrossSite);
        }
        let token = (headers.get(header::AUTHORIZATION))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or(Refusal::NoToken)?;
        let offered = digest(token.trim());
        (self.digests.iter())
            .find(|(_, known)| *known == offered)
            .map(|(name, _)| Operator(name.clone()))
            .ok_or(Refusal::UnknownToken)
    }

    /// [`Tokens::authorise`] for a request with a body, which must be JSON.
    pub fn authorise_json(&self, headers: &HeaderMap) -> Result<Operator, Refusal> {
        let operator = self.authorise(headers)?;
        let json = (headers.get(header::CONTENT_TYPE))
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(';').next() == Some("application/json"));
        match json {
            true => Ok(operator),
            false => Err(Refusal::NotJson),
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What the browser says about where a request came from, when it says:
/// `Sec-Fetch-Site` other than same-origin (or none, typed by hand); from
/// a browser too old to send it, an `Origin` whose host is not the one
/// the request was sent to. `Sec-Fetch-Site` is the browser's own verdict,
/// so a reverse proxy that rewrites `Host` does not make a same-origin
/// action look cross-site.
fn from_another_site(headers: &HeaderMap) -> bool {
    let value = |name| {
        headers
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    if let Some(site) = value("sec-fetch-site") {
        return site != "same-origin" && site != "none";
    }
    match (value("origin"), value("host")) {
        (Some("null"), _) => true,
        (Some(origin), Some(host)) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            !origin_host.eq_ignore_ascii_case(host)
        }
        (Some(_), None) => true,
        (None, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    const TOKEN: &str = "s3cret-s3cret-s3cret";

    fn tokens() -> Tokens {
        Tokens::load(None, Some(&format!("alice:{TOKEN}"))).unwrap()
    }

    #[test]
    fn an_action_needs_a_known_token() {
        let bearer = format!("Bearer {TOKEN}");
        let ok = headers(&[("authorization", &bearer), ("host", "127.0.0.1:9898")]);
        assert_eq!(tokens().authorise(&ok), Ok(Operator("alice".into())));
        assert_eq!(tokens().authorise(&headers(&[])), Err(Refusal::NoToken));
        let wrong = headers(&[("authorization", "Bearer not-the-token-at-all")]);
        assert_eq!(tokens().authorise(&wrong), Err(Refusal::UnknownToken));
        assert_eq!(Tokens::default().authorise(&ok), Err(Refusal::ActionsOff));
    }

    #[test]
    fn another_site_cannot_act_even_with_the_token() {
        let bearer = format!("Bearer {TOKEN}");
        let from = |origin: &str, site: &str| {
            let mut h = headers(&[("authorization", &bearer), ("host", "127.0.0.1:9898")]);
            if !origin.is_empty() {
                h.insert("origin", origin.parse().unwrap());
            }
            if !site.is_empty() {
                h.insert("sec-fetch-site", site.parse().unwrap());
            }
            tokens().authorise(&h)
        };
        assert!(from("http://127.0.0.1:9898", "same-origin").is_ok());
        // Behind a proxy that rewrites Host, the browser's verdict counts.
        assert!(from("https://console.example", "same-origin").is_ok());
        assert_eq!(
            from("http://127.0.0.1:9898", "cross-site"),
            Err(Refusal::CrossSite)
        );
        assert_eq!(from("http://evil.example", ""), Err(Refusal::CrossSite));
        assert_eq!(from("", "cross-site"), Err(Refusal::CrossSite));
        assert_eq!(from("null", ""), Err(Refusal::CrossSite));
        let form = headers(&[
            ("authorization", &bearer),
            ("content-type", "application/x-www-form-urlencoded"),
        ]);
        assert_eq!(tokens().authorise_json(&form), Err(Refusal::NotJson));
    }

    #[test]
    fn bad_token_lines_are_refused_with_their_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# operators\n\nbob:0123456789abcdef\nbad line\n").unwrap();
        let err = Tokens::load(Some(&file), None).unwrap_err().to_string();
        assert!(err.ends_with("line 4: expected `name:token`"), "{err}");
        let short = Tokens::load(None, Some("bob:short"))
            .unwrap_err()
            .to_string();
        assert!(short.contains("shorter than 16"), "{short}");
        std::fs::write(&file, "bob:0123456789abcdef\n").unwrap();
        let twice = Tokens::load(Some(&file), Some("bob:0123456789abcdef")).unwrap_err();
        assert!(twice.to_string().contains("named twice"), "{twice}");
        assert!(format!("{:?}", tokens()).contains("alice"));
        assert!(!format!("{:?}", tokens()).contains(TOKEN));
    }
}
