"""Probe: a test handler that does what each event's data asks.

``{"action": "ok"}`` emits ``probe.out``; ``"permanent"`` and ``"retryable"``
fail that way; ``"retry-once"`` fails retryably on the first attempt only;
``"crash"`` raises an uncaught exception, which traps.
"""
from eventhost import Event, Permanent, Retryable, config, emit, handler, log


@handler
def handle(event: Event) -> None:
    action = event.json().get("action")
    log.info(f"probe: {action!r}, attempt {event.attempt}")
    if action == "permanent":
        raise Permanent("probe: permanent failure as asked")
    if action == "retryable":
        raise Retryable("probe: retryable failure as asked")
    if action == "retry-once" and event.attempt == 1:
        raise Retryable("probe: retryable failure as asked")
    if action == "crash":
        raise RuntimeError("probe: crashed as asked")
    data = {"input": event.id, "greeting": config("greeting"), "lang": "python",
            "attempt": event.attempt}
    emit("probe.out", "com.example.probe.done", data)
