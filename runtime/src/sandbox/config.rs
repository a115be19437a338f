//! The config capability: `eventhost:handler/config`, granted to every
//! handler.
//!
//! - Manifest: the `[config]` table (scalars and arrays), where a value may
//!   instead name a secret kept out of the manifest: `{ env = "NAME" }` (an
//!   environment variable of the runtime) or `{ file = "/path" }` (a file's
//!   contents, without a trailing newline; a relative path is relative to
//!   the runtime's working directory).
//! - Resolved at load: [`ConfigValues`], every value rendered once as the
//!   string `config.get` returns: strings as written, other TOML values in
//!   their TOML form (`5000`, `true`, `[1, 2]`), secrets as read. A secret
//!   that is missing fails the load, naming the key and where it looked.
//! - Per invocation: a shared reference; reads only, nothing to commit.
//!
//! Secret values are removed from what the guest sends out through the host
//! (see [`super::secrets`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use wasmtime::component::{HasSelf, Linker};

use super::capability::{Capability, InvocationContext, View};
use super::eventhost::handler::config;
use super::secrets::Redactor;

/// A handler's `[config]` values, as `config.get` returns them.
#[derive(Debug, Clone, Default)]
pub struct ConfigValues {
    values: Arc<BTreeMap<String, String>>,
    redactor: Redactor,
}

/// Where a `[config]` value comes from.
enum Source<'a> {
    Inline(String),
    Env(&'a str),
    File(&'a str),
}

fn source_of<'a>(key: &str, value: &'a toml::Value) -> Result<Source<'a>> {
    Ok(match value {
        toml::Value::String(s) => Source::Inline(s.clone()),
        toml::Value::Table(table) => {
            let only = |name: &str| table.len() == 1 && table.contains_key(name);
            match (table.get("env"), table.get("file")) {
                (Some(toml::Value::String(var)), _) if only("env") => Source::Env(var),
                (_, Some(toml::Value::String(path))) if only("file") => Source::File(path),
                _ => bail!(
                    "`config.{key}` is a table; config values are scalars, arrays, \
                     or a secret written as {{ env = \"NAME\" }} or {{ file = \"/path\" }}"
                ),
            }
        }
        other => Source::Inline(other.to_string()),
    })
}

impl ConfigValues {
    /// Checks the shape of the manifest's `[config]` table, reading no
    /// secret (manifest validation must not depend on the environment).
    pub fn check(table: &BTreeMap<String, toml::Value>) -> Result<()> {
        for (key, value) in table {
            source_of(key, value)?;
        }
        Ok(())
    }

    /// Renders the table, reading every secret.
    pub fn resolve(table: &BTreeMap<String, toml::Value>) -> Result<Self> {
        let mut values = BTreeMap::new();
        let mut secrets = Vec::new();
        for (key, value) in table {
            let rendered = match source_of(key, value)? {
                Source::Inline(text) => text,
                Source::Env(var) => {
                    let value = std::env::var(var).with_context(|| {
                        format!("`config.{key}`: environment variable {var} is not set")
                    })?;
                    secrets.push(value.clone());
                    value
                }
                Source::File(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("`config.{key}`: reading secret file {path}"))?;
                    let value = text.trim_end_matches(['\n', '\r']).to_string();
                    secrets.push(value.clone());
                    value
                }
            };
            values.insert(key.clone(), rendered);
        }
        Ok(ConfigValues {
            values: Arc::new(values),
            redactor: Redactor::new(secrets),
        })
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.values.get(key).cloned()
    }

    /// What removes this handler's secrets from text.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }
}

impl config::Host for ConfigValues {
    fn get(&mut self, key: String) -> Option<String> {
        ConfigValues::get(self, &key)
    }
}

/// The config capability.
pub struct Config;

impl Config {
    /// The secrets among a handler's `[config]` values, to redact.
    pub fn secrets(values: Option<&ConfigValues>) -> Redactor {
        values.map(|v| v.redactor().clone()).unwrap_or_default()
    }
}

impl Capability for Config {
    type Grant = ConfigValues;
    type State = ConfigValues;
    const GRANTED_BY: Option<&'static str> = None;
    const IMPORTS: &'static [&'static str] = &["eventhost:handler/config@"];
    type Usage = ();
    type Metrics = ();
    type Series = ();

    fn state(grant: Option<&Arc<ConfigValues>>, _: &InvocationContext) -> ConfigValues {
        grant
            .map(|values| ConfigValues::clone(values))
            .unwrap_or_default()
    }

    fn add_to_linker<T: View<Self>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        config::add_to_linker::<_, HasSelf<ConfigValues>>(linker, |t| View::<Config>::state(t))?;
        // Components built against the 0.1.0 contract import the same
        // interface under its old name (see `super::V0_1`).
        linker.instance(&super::v0_1("config"))?.func_wrap(
            "get",
            |mut store, (key,): (String,)| {
                let values: &mut ConfigValues = View::<Config>::state(store.data_mut());
                Ok((values.get(&key),))
            },
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_render_as_written_and_tables_are_refused() {
        let table: BTreeMap<String, toml::Value> =
            toml::from_str("a = \"EUR\"\nb = 5000\nc = [1, 2]\nd = true").unwrap();
        let values = ConfigValues::resolve(&table).unwrap();
        assert_eq!(values.get("a").as_deref(), Some("EUR"));
        assert_eq!(values.get("b").as_deref(), Some("5000"));
        assert_eq!(values.get("c").as_deref(), Some("[1, 2]"));
        assert_eq!(values.get("d").as_deref(), Some("true"));
        assert_eq!(values.get("missing"), None);
        let nested: BTreeMap<String, toml::Value> = toml::from_str("[n]\nx = 1").unwrap();
        let err = ConfigValues::check(&nested).unwrap_err().to_string();
        assert!(err.contains("config.n"), "{err}");
    }

    #[test]
    fn secrets_come_from_the_environment_or_a_file_and_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "file-secret-1\n").unwrap();
        // SAFETY: no other test reads or writes this variable.
        unsafe { std::env::set_var("EVENTHOST_TEST_SECRET_A", "env-secret-1") };
        let text = format!(
            "a = {{ env = \"EVENTHOST_TEST_SECRET_A\" }}\nb = {{ file = {:?} }}\nc = \"plain\"",
            file.display().to_string()
        );
        let table: BTreeMap<String, toml::Value> = toml::from_str(&text).unwrap();
        ConfigValues::check(&table).unwrap();
        let values = ConfigValues::resolve(&table).unwrap();
        assert_eq!(values.get("a").as_deref(), Some("env-secret-1"));
        assert_eq!(values.get("b").as_deref(), Some("file-secret-1"));
        let redacted = values
            .redactor()
            .redact("key env-secret-1 and file-secret-1, plain stays");
        assert_eq!(redacted, "key [redacted] and [redacted], plain stays");

        let missing: BTreeMap<String, toml::Value> =
            toml::from_str("k = { env = \"EVENTHOST_TEST_NOT_SET\" }").unwrap();
        ConfigValues::check(&missing).unwrap();
        let err = format!("{:#}", ConfigValues::resolve(&missing).unwrap_err());
        assert!(
            err.contains("config.k") && err.contains("EVENTHOST_TEST_NOT_SET"),
            "{err}"
        );
        let odd: BTreeMap<String, toml::Value> =
            toml::from_str("k = { env = \"A\", file = \"b\" }").unwrap();
        assert!(ConfigValues::check(&odd).is_err());
    }
}
