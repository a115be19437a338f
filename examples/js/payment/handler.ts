// Payment (as examples/payment): orders.created -> payments.completed, or
// payments.failed when declined; a total that does not match its items is
// permanent. With `provider_url` configured the charge is a POST to it.
import { Permanent, checkStatus, config, configNumber, emit, handler, readJson, request } from "eventhost";

type Order = { order_id: string; items: { quantity: number; price: number }[]; total: number };
type Charge = { paymentId: string } | { declined: string };

export const handle = handler(async (event) => {
  const { order_id: id, items, total } = event.json<Order>();
  // The shape is the schema's (checked by the host); the total is a business rule.
  const sum = items.reduce((s, item) => s + item.quantity * item.price, 0);
  if (Math.abs(sum - total) > 0.005) throw new Permanent(`order ${id}: total ${total} but items sum to ${sum}`);
  const charged = await charge(id, total);
  if ("paymentId" in charged) {
    const data = { order_id: id, payment_id: charged.paymentId, amount: total };
    emit("payments.completed", "com.example.payment.completed", data, { subject: id });
  } else {
    emit("payments.failed", "com.example.payment.failed", { order_id: id, reason: charged.declined }, { subject: id });
  }
});

async function charge(orderId: string, total: number): Promise<Charge> {
  const maxCharge = configNumber("max_charge", 5000);
  if (total > maxCharge) return { declined: `amount ${total} exceeds the ${maxCharge} limit` };
  const provider = config("provider_url");
  if (provider === undefined) return { paymentId: `pay-${orderId}` };
  const response = await request(`${provider}/charges`, {
    method: "POST",
    headers: { authorization: `Bearer ${config("api_key", "")}`, "content-type": "application/json" },
    body: JSON.stringify({ order_id: orderId, amount: total }),
  });
  if (response.status === 402) return { declined: (await readJson(response)).declined ?? "declined" };
  const receipt = await readJson(await checkStatus(response));
  if (typeof receipt.id !== "string") throw new Permanent("the provider's answer has no charge id");
  return { paymentId: receipt.id };
}
