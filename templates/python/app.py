"""{{name}}: greets each com.example.greeting.requested event."""
from eventhost import Event, Permanent, config, emit, handler, log


@handler
def handle(event: Event) -> None:
    name = event.json().get("name", "")  # data that is not JSON is a Permanent error
    if not name:
        raise Permanent("a greeting needs a name")
    greeting = config("greeting", "Hello")
    log.info(f"greeting {name}")
    emit("greetings.sent", "com.example.greeting.sent",
         {"message": f"{greeting}, {name}!"}, subject=name)
