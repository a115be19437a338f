//! JetStream as the runtime uses it: where the servers are and how to
//! reach them ([`endpoint`]), which versions they run and what each can
//! keep safely ([`server`]), and the streams and buckets declared at start
//! ([`declare`]), as the runtime's config file says ([`config_file`]); and
//! the atomic batch publish current servers offer ([`batch`]).

pub mod batch;
pub mod config_file;
pub mod declare;
pub mod endpoint;
pub mod server;
