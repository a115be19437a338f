"""Payment: charges each new order. ``payments.completed`` with the payment id, or
``payments.failed`` when declined: a total over config ``max_charge``, or a 402 from the
provider at config ``provider_url`` (without one, the charge is simulated: ``pay-<id>``).
Provider 5xx and timeouts are retried; a total not matching the items is permanent."""
from eventhost import Event, Permanent, config, config_float, emit, handler, http


def num(x: float) -> str:  # 5000.0 as "5000", as in the Rust handler's messages
    return repr(x).removesuffix(".0")


def charge(order_id: str, total: float) -> tuple[str, dict]:
    """("completed", the payment) or ("failed", why the charge was declined)."""
    if total > (max_charge := config_float("max_charge", 5000.0)):
        return "failed", {"reason": f"amount {num(total)} exceeds the {num(max_charge)} limit"}
    if (provider := config("provider_url")) is None:
        return "completed", {"payment_id": f"pay-{order_id}", "amount": total}
    response = http.post(f"{provider}/charges", json={"order_id": order_id, "amount": total},
                         headers={"authorization": f"Bearer {config('api_key', '')}"})
    if response.status == 402:
        return "failed", {"reason": str(response.json().get("declined", "declined"))}
    receipt = response.raise_for_status().json()
    if not isinstance(receipt, dict) or not isinstance(receipt.get("id"), str):
        raise Permanent("the provider's answer has no charge id")
    return "completed", {"payment_id": receipt["id"], "amount": total}


@handler
def handle(event: Event) -> None:
    # The host checked the order against its schema (examples/schemas): the
    # fields are there with their types. The total is a business rule.
    order = event.json()
    id, total = order["order_id"], float(order["total"])
    items_sum = sum(i["quantity"] * i["price"] for i in order["items"])
    if abs(items_sum - total) > 0.005:
        raise Permanent(f"order {id}: total {num(total)} but items sum to {num(items_sum)}")
    kind, data = charge(id, total)
    emit(f"payments.{kind}", f"com.example.payment.{kind}", {"order_id": id, **data}, subject=id)
