"""Notification: confirms each completed payment to the customer.

``payments.completed`` -> ``notifications.sent``. With ``mail_url`` configured,
the confirmation is sent through that mail API (``POST /emails``, the key from
``api_key``); the host's idempotency key makes a retried send the same email.
Without it, the email is only recorded as sent.
"""
from eventhost import Event, config, emit, handler, http


@handler
def handle(event: Event) -> None:
    # Checked by the host against the type's schema (examples/schemas).
    order_id = event.json()["order_id"]
    if (mail := config("mail_url")) is not None:
        email = {"to": f"customer-of-{order_id}@example.com",
                 "subject": "Your order is confirmed", "order_id": order_id}
        headers = {"authorization": f"Bearer {config('api_key', '')}"}
        http.post(f"{mail}/emails", json=email, headers=headers).raise_for_status()
    sent = {"order_id": order_id, "channel": "email", "template": "order_confirmation"}
    emit("notifications.sent", "com.example.notification.sent", sent, subject=order_id)
