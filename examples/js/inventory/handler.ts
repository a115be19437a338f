// Inventory (as examples/inventory): reserves stock for each order and, as
// the saga's compensation, releases it when the payment fails.
//
// Stock levels are keys of the `inventory` bucket (`stock.<sku>`, units on
// hand; a SKU never seen starts at config `initial_stock`), and what an
// order holds is `reservation.<order>`. `orders.created` reserves the items
// (`inventory.reserved` / `inventory.rejected`); `payments.failed` puts the
// reservation back (`inventory.released`). The two run on different
// consumers, so a failed payment can be seen before its order: the release
// then leaves a cancelled reservation, and the late order reserves nothing.
import { configNumber, emit, handler } from "eventhost";
import { Bucket } from "eventhost/kv";

type Item = { product_id: string; quantity: number };
type Order = { order_id: string; items?: Item[] };
type Reservation = { items: Item[]; cancelled: boolean };

function stockOf(bucket: Bucket, sku: string): number {
  return bucket.getJson<number>(`stock.${sku}`, configNumber("initial_stock", 100));
}

function emitInventory(kind: string, orderId: string, data: object) {
  emit(`inventory.${kind}`, `com.example.inventory.${kind}`, data, { subject: orderId });
}

function reserve(bucket: Bucket, orderId: string, items: Item[]) {
  const key = `reservation.${orderId}`;
  if (bucket.exists(key)) return; // Cancelled before it came: nothing to hold.
  // Every item or none: check them all (a SKU listed twice counts once, with
  // both quantities) before taking any stock.
  const wanted = new Map<string, number>();
  for (const item of items) wanted.set(item.product_id, (wanted.get(item.product_id) ?? 0) + item.quantity);
  const left: [string, number][] = [];
  for (const [sku, quantity] of [...wanted].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const available = stockOf(bucket, sku);
    if (available < quantity) {
      return emitInventory("rejected", orderId, { order_id: orderId, product_id: sku, wanted: quantity, available });
    }
    left.push([sku, available - quantity]);
  }
  for (const [sku, stock] of left) bucket.putJson(`stock.${sku}`, stock);
  bucket.putJson(key, { items, cancelled: false } satisfies Reservation);
  emitInventory("reserved", orderId, { order_id: orderId, items });
}

function release(bucket: Bucket, orderId: string) {
  const key = `reservation.${orderId}`;
  const reservation = bucket.getJson<Reservation>(key, { items: [], cancelled: false });
  if (reservation.cancelled) return;
  for (const item of reservation.items) {
    const available = stockOf(bucket, item.product_id);
    bucket.putJson(`stock.${item.product_id}`, available + item.quantity);
  }
  bucket.putJson(key, { items: [], cancelled: true } satisfies Reservation);
  emitInventory("released", orderId, { order_id: orderId });
}

export const handle = handler((event) => {
  const bucket = Bucket.open("inventory");
  const order = event.json<Order>();
  // Only the fields a reservation keeps (like the Rust handler's serde types).
  const items = (order.items ?? []).map(({ product_id, quantity }) => ({ product_id, quantity }));
  if (event.type === "com.example.payment.failed") release(bucket, order.order_id);
  else reserve(bucket, order.order_id, items);
});
