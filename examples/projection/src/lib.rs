//! Projection: the checkout's CQRS read model (the seeds' order summary).
//!
//! It consumes the saga's events and keeps, in the `order-summary` bucket,
//! one summary per order (`order.<id>`: status, total, payment,
//! notification, stock) and running totals per user (`user.<id>`). Events of
//! one order arrive on different subjects and in any order, so every update
//! commutes: a payment seen before its order is kept in the summary and
//! added to the user's totals once the order (and with it the user) is
//! known. Amounts are kept in cents, so that sums do not depend on order.
use eventhost_sdk::kv::Bucket;
use eventhost_sdk::{Event, HandlerError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Default, Serialize, Deserialize)]
struct OrderSummary {
    order_id: String,
    status: String,
    user_id: Option<String>,
    total_cents: Option<i64>,
    payment_id: Option<String>,
    paid_cents: Option<i64>,
    payment_failure: Option<String>,
    notified: bool,
    stock: Option<String>,
}

#[derive(Default, Serialize, Deserialize)]
struct UserTotals {
    orders: u64,
    paid_orders: u64,
    spent_cents: i64,
}

fn cents(value: &Value) -> Option<i64> {
    value.as_f64().map(|amount| (amount * 100.0).round() as i64)
}

fn handle(event: Event) -> Result<(), HandlerError> {
    let data: Value = event.json()?;
    let order_id = data["order_id"]
        .as_str()
        .ok_or_else(|| HandlerError::permanent("no order_id"))?;
    let model = Bucket::open("order-summary")?;
    let key = format!("order.{order_id}");
    let mut order: OrderSummary = model.get(&key)?.unwrap_or_default();
    order.order_id = order_id.to_string();
    let (mut orders, mut paid, mut spent) = (0, 0, 0);
    match event.ty() {
        "com.example.order.created" => {
            order.user_id = data["user_id"].as_str().map(String::from);
            order.total_cents = cents(&data["total"]);
            orders = 1;
            if let Some(amount) = order.paid_cents {
                (paid, spent) = (1, amount);
            }
        }
        "com.example.payment.completed" => {
            order.payment_id = data["payment_id"].as_str().map(String::from);
            order.paid_cents = cents(&data["amount"]);
            if order.user_id.is_some() {
                (paid, spent) = (1, order.paid_cents.unwrap_or(0));
            }
        }
        "com.example.payment.failed" => {
            order.payment_failure = data["reason"].as_str().map(String::from)
        }
        "com.example.notification.sent" => order.notified = true,
        "com.example.inventory.reserved" => merge_stock(&mut order, "reserved"),
        "com.example.inventory.rejected" => merge_stock(&mut order, "rejected"),
        "com.example.inventory.released" => merge_stock(&mut order, "released"),
        other => {
            return Err(HandlerError::permanent(format!(
                "unexpected event type {other}"
            )));
        }
    }
    order.status = status(&order).into();
    if let Some(user) = &order.user_id
        && (orders, paid) != (0, 0)
    {
        let key = format!("user.{user}");
        let mut totals: UserTotals = model.get(&key)?.unwrap_or_default();
        totals.orders += orders;
        totals.paid_orders += paid;
        totals.spent_cents += spent;
        model.put(&key, &totals)?;
    }
    model.put(&key, &order)
}

/// Stock events of an order may be handled in any order; the later step of
/// the saga wins: released over rejected over reserved.
fn merge_stock(order: &mut OrderSummary, seen: &str) {
    const STEPS: [&str; 3] = ["reserved", "rejected", "released"];
    let rank = |s: &str| STEPS.iter().position(|step| *step == s);
    if order.stock.as_deref().and_then(rank) < rank(seen) {
        order.stock = Some(seen.to_string());
    }
}

/// Where the order stands, from what is known of it so far.
fn status(order: &OrderSummary) -> &'static str {
    match order {
        OrderSummary {
            payment_failure: Some(_),
            stock: Some(s),
            ..
        } if s == "released" => "compensated",
        OrderSummary {
            payment_failure: Some(_),
            ..
        } => "payment_failed",
        OrderSummary { notified: true, .. } => "confirmed",
        OrderSummary {
            payment_id: Some(_),
            ..
        } => "paid",
        OrderSummary {
            user_id: Some(_), ..
        } => "created",
        _ => "pending",
    }
}

eventhost_sdk::export_handler!(handle);
