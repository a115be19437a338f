// The probe: does what its event asks, so tests can see that the host treats
// a TypeScript handler's successes and failures like a Rust handler's.
import { Permanent, Retryable, config, emit, handler } from "eventhost";

export const handle = handler((event) => {
  const { action } = event.json<{ action: string }>();
  switch (action) {
    case "permanent":
      throw new Permanent("probe: permanent failure as asked");
    case "retryable":
      throw new Retryable("probe: retryable failure as asked");
    case "retry-once":
      if (event.attempt === 1) throw new Retryable("probe: retrying once as asked");
      break;
    case "crash":
      // Not an Error: anything but Retryable and Permanent is a crash (a trap).
      throw "probe: crashed as asked";
  }
  emit("probe.out", "com.example.probe.done", {
    input: event.id,
    greeting: config("greeting"),
    lang: "js",
    attempt: event.attempt,
  });
});
