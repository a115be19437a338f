//! What a handler is, before it runs: its manifest (what it may touch and
//! how the host runs it, [`manifest`]) and its files (`<name>.wasm` beside
//! `<name>.toml`, and the content hash that versions the pair,
//! [`plugins`]).

pub mod grants;
pub mod manifest;
pub mod plugins;
