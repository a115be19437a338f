//! Inventory: reserves stock for each order and, as the saga's
//! compensation, releases it when the payment fails.
//!
//! Stock levels are keys of the `inventory` bucket (`stock.<sku>`, units on
//! hand; a SKU never seen starts at config `initial_stock`), and what an
//! order holds is `reservation.<order>`. `orders.created` reserves every
//! item or none (`inventory.reserved` / `inventory.rejected`);
//! `payments.failed` puts the reservation back (`inventory.released`). The
//! two run on different consumers, so a failed payment can be seen before
//! its order: the release then leaves a cancelled reservation, and the late
//! order reserves nothing.
use std::collections::BTreeMap;

use eventhost_sdk::kv::Bucket;
use eventhost_sdk::{Emit, Event, HandlerError, config_or};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Deserialize)]
struct Order {
    order_id: String,
    #[serde(default)]
    items: Vec<Item>,
}

#[derive(Clone, Deserialize, Serialize)]
struct Item {
    product_id: String,
    quantity: u64,
}

#[derive(Default, Deserialize, Serialize)]
struct Reservation {
    items: Vec<Item>,
    cancelled: bool,
}

fn stock_of(bucket: &Bucket, sku: &str) -> Result<u64, HandlerError> {
    let initial = config_or("initial_stock", 100)?;
    Ok(bucket.get(&format!("stock.{sku}"))?.unwrap_or(initial))
}

fn emit(ty: &str, order_id: &str, data: serde_json::Value) -> Result<(), HandlerError> {
    let subject = format!("inventory.{ty}");
    let ty = format!("com.example.inventory.{ty}");
    Emit::new(subject, ty).subject(order_id).json(&data)?.send()
}

fn reserve(bucket: &Bucket, order: Order) -> Result<(), HandlerError> {
    let key = format!("reservation.{}", order.order_id);
    if bucket.exists(&key)? {
        return Ok(()); // Cancelled before it came: nothing to hold.
    }
    // Every item or none: check them all (a SKU listed twice counts once,
    // with both quantities) before taking any stock.
    let mut wanted: BTreeMap<&str, u64> = BTreeMap::new();
    for item in &order.items {
        *wanted.entry(&item.product_id).or_default() += item.quantity;
    }
    let mut left = Vec::new();
    for (sku, quantity) in wanted {
        let available = stock_of(bucket, sku)?;
        if available < quantity {
            let data = json!({ "order_id": order.order_id, "product_id": sku,
                "wanted": quantity, "available": available });
            return emit("rejected", &order.order_id, data);
        }
        left.push((sku, available - quantity));
    }
    for (sku, stock) in left {
        bucket.put(&format!("stock.{sku}"), &stock)?;
    }
    bucket.put(
        &key,
        &Reservation {
            items: order.items.clone(),
            cancelled: false,
        },
    )?;
    emit(
        "reserved",
        &order.order_id,
        json!({ "order_id": order.order_id, "items": order.items }),
    )
}

fn release(bucket: &Bucket, order_id: &str) -> Result<(), HandlerError> {
    let key = format!("reservation.{order_id}");
    let reservation: Reservation = bucket.get(&key)?.unwrap_or_default();
    if reservation.cancelled {
        return Ok(());
    }
    for item in &reservation.items {
        let available = stock_of(bucket, &item.product_id)?;
        bucket.put(
            &format!("stock.{}", item.product_id),
            &(available + item.quantity),
        )?;
    }
    bucket.put(
        &key,
        &Reservation {
            items: vec![],
            cancelled: true,
        },
    )?;
    emit("released", order_id, json!({ "order_id": order_id }))
}

fn handle(event: Event) -> Result<(), HandlerError> {
    let bucket = Bucket::open("inventory")?;
    let order: Order = event.json()?;
    match event.ty() {
        "com.example.payment.failed" => release(&bucket, &order.order_id),
        _ => reserve(&bucket, order),
    }
}

eventhost_sdk::export_handler!(handle);
