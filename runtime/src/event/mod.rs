//! The CloudEvent at the edges of the runtime: decoding an incoming NATS
//! message ([`decode`]), encoding what a handler emits ([`encode`]), the
//! subjects and patterns events travel on ([`subject`]), and the W3C trace
//! context each event carries ([`trace`]).

pub mod decode;
pub mod encode;
pub mod subject;
pub mod trace;
