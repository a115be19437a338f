//! Inventory: the saga's compensation step. When a payment fails, the stock
//! reserved for the order is released.
//!
//! `payments.failed` → `inventory.released`.
use eventhost_sdk::{Emit, Event, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct PaymentFailed {
    order_id: String,
}

#[derive(Serialize)]
struct InventoryReleased<'a> {
    order_id: &'a str,
}

fn handle(event: Event) -> Result<(), HandlerError> {
    let failed: PaymentFailed = event.json()?;
    eventhost_sdk::info!("releasing stock reserved for order {}", failed.order_id);
    Emit::new("inventory.released", "com.example.inventory.released")
        .subject(&failed.order_id)
        .json(&InventoryReleased {
            order_id: &failed.order_id,
        })?
        .send()
}

eventhost_sdk::export_handler!(handle);
