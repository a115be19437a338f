//! Notification: confirms each completed payment to the customer.
//!
//! `payments.completed` → `notifications.sent`. With `mail_url`
//! configured, the confirmation is sent through that mail API (`POST
//! /emails`, the key from `api_key`); the host's idempotency key makes a
//! retried send the same email. Without it, the email is only recorded as
//! sent.
use eventhost_sdk::{Emit, Event, HandlerError, config, http};
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
    if let Some(mail) = config("mail_url") {
        let api_key = config("api_key").unwrap_or_default();
        let email = serde_json::json!({
            "to": format!("customer-of-{}@example.com", payment.order_id),
            "subject": "Your order is confirmed",
            "order_id": payment.order_id,
        });
        http::Request::post(format!("{mail}/emails"))
            .header("authorization", format!("Bearer {api_key}"))
            .json(&email)?
            .send()?
            .error_for_status()?;
    }
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
