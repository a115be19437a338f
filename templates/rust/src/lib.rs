//! {{name}}: greets each `com.example.greeting.requested` event.
use eventhost_sdk::{Emit, Event, HandlerError, config, info};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Request {
    name: String,
}

fn handle(event: Event) -> Result<(), HandlerError> {
    let Request { name } = event.json()?; // bad data is a permanent error
    if name.is_empty() {
        return Err(HandlerError::permanent("a greeting needs a name"));
    }
    let greeting = config("greeting").unwrap_or_else(|| "Hello".into());
    info!("greeting {name}");
    Emit::new("greetings.sent", "com.example.greeting.sent")
        .subject(&name)
        .json(&json!({ "message": format!("{greeting}, {name}!") }))?
        .send()
}

eventhost_sdk::export_handler!(handle);
