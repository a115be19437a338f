//! The config capability: `eventhost:handler/config`, granted to every
//! handler.
//!
//! - Manifest: the `[config]` table (scalars and arrays).
//! - Resolved at load: [`ConfigValues`], every value rendered once as the
//!   string `config.get` returns: strings as written, other TOML values in
//!   their TOML form (`5000`, `true`, `[1, 2]`).
//! - Per invocation: a shared reference; reads only, nothing to commit.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Result, bail};
use wasmtime::component::{HasSelf, Linker};

use super::bindings::eventhost::handler::config;
use super::state::InvocationState;

/// A handler's `[config]` values, as `config.get` returns them.
#[derive(Debug, Clone, Default)]
pub struct ConfigValues(Arc<BTreeMap<String, String>>);

impl ConfigValues {
    /// Checks and renders the manifest's `[config]` table.
    pub fn from_table(table: &BTreeMap<String, toml::Value>) -> Result<Self> {
        let mut values = BTreeMap::new();
        for (key, value) in table {
            let rendered = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Table(_) => {
                    bail!("`config.{key}` is a table; config values must be scalars or arrays")
                }
                other => other.to_string(),
            };
            values.insert(key.clone(), rendered);
        }
        Ok(ConfigValues(Arc::new(values)))
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

impl config::Host for ConfigValues {
    fn get(&mut self, key: String) -> Option<String> {
        ConfigValues::get(self, &key)
    }
}

pub fn add_to_linker(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
    config::add_to_linker::<_, HasSelf<ConfigValues>>(linker, |state| &mut state.config)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_render_as_written_and_tables_are_refused() {
        let table: BTreeMap<String, toml::Value> =
            toml::from_str("a = \"EUR\"\nb = 5000\nc = [1, 2]\nd = true").unwrap();
        let values = ConfigValues::from_table(&table).unwrap();
        assert_eq!(values.get("a").as_deref(), Some("EUR"));
        assert_eq!(values.get("b").as_deref(), Some("5000"));
        assert_eq!(values.get("c").as_deref(), Some("[1, 2]"));
        assert_eq!(values.get("d").as_deref(), Some("true"));
        assert_eq!(values.get("missing"), None);
        let nested: BTreeMap<String, toml::Value> = toml::from_str("[n]\nx = 1").unwrap();
        let err = ConfigValues::from_table(&nested).unwrap_err().to_string();
        assert!(err.contains("config.n"), "{err}");
    }
}
