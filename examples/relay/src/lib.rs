//! Relay: the smallest useful handler, for measuring the host's own cost.
//!
//! Every event is re-emitted unchanged (same type, same data) to the subject
//! named by `config.to`, so the time an event spends in the runtime is all
//! host work: decode, idempotency, instantiation, publish and ack.
use eventhost_sdk::{Emit, Event, HandlerError, config};

fn handle(event: Event) -> Result<(), HandlerError> {
    let to = config("to").ok_or_else(|| HandlerError::permanent("`config.to` is not set"))?;
    let mut out = Emit::new(to, event.ty());
    if let Some(data) = event.data() {
        let content_type = event
            .datacontenttype()
            .unwrap_or("application/octet-stream");
        out = out.data(content_type, data.to_vec());
    }
    out.send()
}

eventhost_sdk::export_handler!(handle);
