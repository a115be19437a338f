//! The benchmarked handlers' logic as plain Rust, for the native baselines.
//!
//! Each function does what its guest in `examples/` does, from the event's
//! data bytes to the events it emits, so a comparison measures the sandbox
//! and nothing else.

use cloudevents::event::Data;
use cloudevents::{AttributesReader, Event};
use eventhost::sandbox::EmittedEvent;
use serde::Deserialize;
use serde_json::json;

/// Which example handler a workload runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `examples/relay`: re-emits the event unchanged.
    Relay,
    /// `examples/payment`: parses an order, checks it, emits a payment.
    Payment,
    /// `examples/counter`: one key-value write and one output per event.
    /// End to end only (the sandbox bench, which shares this file, does not
    /// run it); its baseline's logic is async, in the e2e bench's baseline.
    #[allow(dead_code)]
    State,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Relay => "relay",
            Workload::Payment => "payment",
            Workload::State => "counter",
        }
    }

    /// Runs the handler's logic natively.
    pub fn handle(self, event: &Event) -> Result<Vec<EmittedEvent>, String> {
        let data = data_bytes(event);
        match self {
            Workload::Relay => relay(event, data),
            Workload::Payment => payment(&data),
            Workload::State => Err("the state workload's logic needs a key-value store".into()),
        }
    }
}

/// The data as the guest receives it: bytes.
pub fn data_bytes(event: &Event) -> Vec<u8> {
    match event.data() {
        Some(Data::Binary(bytes)) => bytes.clone(),
        Some(Data::String(s)) => s.clone().into_bytes(),
        Some(Data::Json(value)) => value.to_string().into_bytes(),
        None => Vec::new(),
    }
}

pub fn emitted(
    destination: &str,
    ty: &str,
    subject: Option<String>,
    data: Vec<u8>,
) -> EmittedEvent {
    EmittedEvent {
        destination: destination.to_string(),
        type_: ty.to_string(),
        id: None,
        source: None,
        subject,
        time: None,
        datacontenttype: Some("application/json".to_string()),
        dataschema: None,
        extensions: Vec::new(),
        data: Some(data),
    }
}

fn relay(event: &Event, data: Vec<u8>) -> Result<Vec<EmittedEvent>, String> {
    Ok(vec![emitted("relay.out", event.ty(), None, data)])
}

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

/// `examples/payment/src/lib.rs`, line for line.
fn payment(data: &[u8]) -> Result<Vec<EmittedEvent>, String> {
    let order: Order = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let id = order.order_id;
    let items_sum: f64 = order
        .items
        .iter()
        .map(|i| f64::from(i.quantity) * i.price)
        .sum();
    if (items_sum - order.total).abs() > 0.005 {
        return Err(format!(
            "order {id}: total {} but items sum to {items_sum}",
            order.total
        ));
    }
    let max_charge = 5000.0;
    let total = order.total;
    let (destination, ty, data) = if total <= max_charge {
        let data = json!({ "order_id": id, "payment_id": format!("pay-{id}"), "amount": total });
        ("payments.completed", "com.example.payment.completed", data)
    } else {
        let reason = format!("amount {total} exceeds the {max_charge} limit");
        let data = json!({ "order_id": id, "reason": reason });
        ("payments.failed", "com.example.payment.failed", data)
    };
    let bytes = serde_json::to_vec(&data).map_err(|e| e.to_string())?;
    Ok(vec![emitted(destination, ty, Some(id), bytes)])
}

/// An order as the benchmark publishes it: `n` makes the id unique.
pub fn order_json(n: u64) -> Vec<u8> {
    format!(
        r#"{{"order_id":"o-{n}","user_id":"u-{}","items":[{{"product_id":"sku-7","quantity":2,"price":19.99}}],"total":39.98}}"#,
        n % 100
    )
    .into_bytes()
}
