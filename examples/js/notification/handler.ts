// Notification (as examples/notification): payments.completed ->
// notifications.sent. With `mail_url` configured, the confirmation is sent
// through that mail API first (POST /emails, the key from `api_key`).
import { checkStatus, config, emit, handler, request } from "eventhost";

export const handle = handler(async (event) => {
  const { order_id: orderId } = event.json<{ order_id: string }>();
  const mail = config("mail_url");
  if (mail !== undefined) {
    const email = {
      to: `customer-of-${orderId}@example.com`,
      subject: "Your order is confirmed",
      order_id: orderId,
    };
    const response = await request(`${mail}/emails`, {
      method: "POST",
      headers: { authorization: `Bearer ${config("api_key", "")}`, "content-type": "application/json" },
      body: JSON.stringify(email),
    });
    await checkStatus(response);
  }
  const sent = { order_id: orderId, channel: "email", template: "order_confirmation" };
  emit("notifications.sent", "com.example.notification.sent", sent, { subject: orderId });
});
