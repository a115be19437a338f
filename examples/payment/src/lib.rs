//! Payment: charges each new order and reports the result.
//!
//! `orders.created` → `payments.completed` when the total is within the
//! `max_charge` limit, otherwise `payments.failed` (which triggers the
//! inventory compensation). An order whose total does not match its items is
//! rejected as a permanent error: no retry can fix it.
use eventhost_sdk::{Emit, Event, HandlerError, config_or};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct OrderCreated {
    order_id: String,
    items: Vec<Item>,
    total: f64,
}

#[derive(Deserialize)]
struct Item {
    quantity: u32,
    price: f64,
}

#[derive(Serialize)]
struct PaymentCompleted<'a> {
    order_id: &'a str,
    payment_id: String,
    amount: f64,
}

#[derive(Serialize)]
struct PaymentFailed<'a> {
    order_id: &'a str,
    reason: String,
}

fn handle(event: Event) -> Result<(), HandlerError> {
    let order: OrderCreated = event.json()?;
    let items_sum: f64 = order
        .items
        .iter()
        .map(|i| f64::from(i.quantity) * i.price)
        .sum();
    if (items_sum - order.total).abs() > 0.005 {
        let why = format!(
            "order {}: total {} but items sum to {items_sum}",
            order.order_id, order.total
        );
        return Err(HandlerError::permanent(why));
    }
    let max_charge: f64 = config_or("max_charge", 5000.0)?;
    let id = order.order_id.as_str();
    let outcome = if order.total <= max_charge {
        let completed = PaymentCompleted {
            order_id: id,
            payment_id: format!("pay-{id}"),
            amount: order.total,
        };
        Emit::new("payments.completed", "com.example.payment.completed").json(&completed)?
    } else {
        let reason = format!("amount {} exceeds the {max_charge} limit", order.total);
        Emit::new("payments.failed", "com.example.payment.failed").json(&PaymentFailed {
            order_id: id,
            reason,
        })?
    };
    outcome.subject(id).send()
}

eventhost_sdk::export_handler!(handle);
