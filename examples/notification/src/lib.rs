//! Notification: confirms each completed payment to the customer.
//!
//! `payments.completed` → `notifications.sent`.
use eventhost_sdk::{Emit, Event, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct PaymentCompleted {
    order_id: String,
}

#[derive(Serialize)]
struct NotificationSent<'a> {
    order_id: &'a str,
    channel: &'a str,
    template: &'a str,
}

fn handle(event: Event) -> Result<(), HandlerError> {
    let payment: PaymentCompleted = event.json()?;
    let sent = NotificationSent {
        order_id: &payment.order_id,
        channel: "email",
        template: "order_confirmation",
    };
    Emit::new("notifications.sent", "com.example.notification.sent")
        .subject(&payment.order_id)
        .json(&sent)?
        .send()
}

eventhost_sdk::export_handler!(handle);
