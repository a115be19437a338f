// {{name}}: greets each com.example.greeting.requested event.
import { Permanent, config, emit, handler, log } from "eventhost";

export const handle = handler((event) => {
  const { name } = event.json<{ name?: string }>(); // data that is not JSON is a Permanent error
  if (!name) throw new Permanent("a greeting needs a name");
  const greeting = config("greeting", "Hello");
  log.info(`greeting ${name}`);
  emit("greetings.sent", "com.example.greeting.sent", { message: `${greeting}, ${name}!` }, { subject: name });
});
