//! Payment: charges each new order and reports the result.
//!
//! `orders.created` → `payments.completed` with the provider's payment id,
//! or `payments.failed` when the charge is declined (which triggers the
//! inventory compensation). An order whose total does not match its items is
//! rejected as a permanent error: no retry can fix it.
//!
//! With `provider_url` configured, the charge goes to that payment
//! provider over HTTP (`POST /charges`, the key from `api_key`, a secret):
//! a decline (402) is a `payments.failed`, a 5xx or timeout is retried by
//! the host, and the host's idempotency key makes every retry the same
//! charge. Without it, the charge is only simulated, which is what the
//! benchmarks measure: the host, not a provider. Either way totals over
//! `max_charge` are declined before any call.
use eventhost_sdk::{Emit, Event, HandlerError, config, config_or, http};
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
    let (destination, ty, data) = match charge(&id, total)? {
        Ok(payment_id) => {
            let data = json!({ "order_id": id, "payment_id": payment_id, "amount": total });
            ("payments.completed", "com.example.payment.completed", data)
        }
        Err(reason) => {
            let data = json!({ "order_id": id, "reason": reason });
            ("payments.failed", "com.example.payment.failed", data)
        }
    };
    Emit::new(destination, ty).subject(&id).json(&data)?.send()
}

/// The payment id of the charge, or why it was declined.
fn charge(order_id: &str, total: f64) -> Result<Result<String, String>, HandlerError> {
    let max_charge: f64 = config_or("max_charge", 5000.0)?;
    if total > max_charge {
        return Ok(Err(format!(
            "amount {total} exceeds the {max_charge} limit"
        )));
    }
    let Some(provider) = config("provider_url") else {
        return Ok(Ok(format!("pay-{order_id}")));
    };
    let api_key = config("api_key").unwrap_or_default();
    let response = http::Request::post(format!("{provider}/charges"))
        .header("authorization", format!("Bearer {api_key}"))
        .json(&json!({ "order_id": order_id, "amount": total }))?
        .send()?;
    if response.status == 402 {
        let answer: serde_json::Value = response.json()?;
        return Ok(Err(answer["declined"]
            .as_str()
            .unwrap_or("declined")
            .to_string()));
    }
    let receipt: serde_json::Value = response.error_for_status()?.json()?;
    match receipt["id"].as_str() {
        Some(id) => Ok(Ok(id.to_string())),
        None => Err(HandlerError::permanent(
            "the provider's answer has no charge id",
        )),
    }
}

eventhost_sdk::export_handler!(handle);
