"""Inventory: reserves stock for each order and, as the saga's compensation,
releases it when the payment fails.

Stock levels are keys of the ``inventory`` bucket (``stock.<sku>``, units on
hand; a SKU never seen starts at config ``initial_stock``), and what an order
holds is ``reservation.<order>``. ``orders.created`` reserves the items
(``inventory.reserved`` / ``inventory.rejected``); ``payments.failed`` puts
the reservation back (``inventory.released``). The two run on different
consumers, so a failed payment can be seen before its order: the release then
leaves a cancelled reservation, and the late order reserves nothing.
"""
from typing import Any

from eventhost import Event, config_int, emit, handler
from eventhost.kv import Bucket


def parse_order(event: Event) -> tuple[str, list[dict[str, Any]]]:
    """The order id and its items (product_id and quantity only)."""
    # Checked by the host against the type's schema (examples/schemas).
    order = event.json()
    items = [{"product_id": i["product_id"], "quantity": i["quantity"]}
             for i in order.get("items", [])]
    return order["order_id"], items


def stock_of(bucket: Bucket, sku: str) -> int:
    return bucket.get_json(f"stock.{sku}", config_int("initial_stock", 100))


def emit_inventory(ty: str, order_id: str, data: dict[str, Any]) -> None:
    emit(f"inventory.{ty}", f"com.example.inventory.{ty}", data, subject=order_id)


def reserve(bucket: Bucket, order_id: str, items: list[dict[str, Any]]) -> None:
    key = f"reservation.{order_id}"
    if bucket.exists(key):
        return  # Cancelled before it came: nothing to hold.
    # Every item or none: check them all (a SKU listed twice counts once, with
    # both quantities) before taking any stock.
    wanted: dict[str, int] = {}
    for item in items:
        wanted[item["product_id"]] = wanted.get(item["product_id"], 0) + item["quantity"]
    left = {}
    for sku, quantity in sorted(wanted.items()):
        available = stock_of(bucket, sku)
        if available < quantity:
            emit_inventory("rejected", order_id, {"order_id": order_id, "product_id": sku,
                                                  "wanted": quantity, "available": available})
            return
        left[sku] = available - quantity
    for sku, stock in left.items():
        bucket.put_json(f"stock.{sku}", stock)
    bucket.put_json(key, {"items": items, "cancelled": False})
    emit_inventory("reserved", order_id, {"order_id": order_id, "items": items})


def release(bucket: Bucket, order_id: str) -> None:
    key = f"reservation.{order_id}"
    reservation = bucket.get_json(key, {"items": [], "cancelled": False})
    if reservation["cancelled"]:
        return
    for item in reservation["items"]:
        sku = item["product_id"]
        bucket.put_json(f"stock.{sku}", stock_of(bucket, sku) + item["quantity"])
    bucket.put_json(key, {"items": [], "cancelled": True})
    emit_inventory("released", order_id, {"order_id": order_id})


@handler
def handle(event: Event) -> None:
    bucket = Bucket.open("inventory")
    order_id, items = parse_order(event)
    if event.type == "com.example.payment.failed":
        release(bucket, order_id)
    else:
        reserve(bucket, order_id, items)
