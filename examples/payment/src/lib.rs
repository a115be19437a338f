//! Payment: charges each new order and reports the result.
//!
//! `orders.created` → `payments.completed` when the total is within the
//! `max_charge` limit, otherwise `payments.failed` (which triggers the
//! inventory compensation). An order whose total does not match its items is
//! rejected as a permanent error: no retry can fix it.
use eventhost_sdk::{Emit, Event, HandlerError, config_or};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Order {
    order_id: String,
    items: Vec<Item>,
    total: f64,
}

#[derive(Deserialize)]
struct Item {
    quantity: u32,
    price: f64,
}

fn handle(event: Event) -> Result<(), HandlerError> {
    let Order {
        order_id: id,
        items,
        total,
    } = event.json()?;
    let items_sum: f64 = items.iter().map(|i| f64::from(i.quantity) * i.price).sum();
    if (items_sum - total).abs() > 0.005 {
        let why = format!("order {id}: total {total} but items sum to {items_sum}");
        return Err(HandlerError::permanent(why));
    }
    let max_charge: f64 = config_or("max_charge", 5000.0)?;
    let (destination, ty, data) = if total <= max_charge {
        let data = json!({ "order_id": id, "payment_id": format!("pay-{id}"), "amount": total });
        ("payments.completed", "com.example.payment.completed", data)
    } else {
        let reason = format!("amount {total} exceeds the {max_charge} limit");
        let data = json!({ "order_id": id, "reason": reason });
        ("payments.failed", "com.example.payment.failed", data)
    };
    Emit::new(destination, ty).subject(&id).json(&data)?.send()
}

eventhost_sdk::export_handler!(handle);
