// The event store (manifest `[eventstore]`): an aggregate's events on one
// subject, read in order and appended on condition that nobody appended
// since. Only handlers that import `eventhost/events` import the interface.
// Types and documentation: events.d.ts.

import * as store from 'eventhost:handler/event-store@0.2.0';
import { Event, Permanent, outgoing } from './index.js';

/** Events read per call to the host. */
const PAGE = 256;

const ERRORS = {
  'access-denied': 'access denied',
  invalid: 'invalid',
  'limit-exceeded': 'limit exceeded',
};

function call(what) {
  try {
    return what();
  } catch (err) {
    const payload = err?.payload;
    if (payload?.tag === undefined) throw err;
    throw new Permanent(`event store: ${ERRORS[payload.tag] ?? payload.tag}: ${payload.val}`);
  }
}

/** The sequence of the last event on `subject`; 0 if it has none. */
export function lastSequence(subject) {
  return Number(call(() => store.lastSequence(subject)));
}

/** Every event on `subject` after sequence `after` (0: from the start). */
export function read(subject, after = 0) {
  const events = [];
  let from = BigInt(after);
  for (;;) {
    const page = call(() => store.read(subject, from, PAGE));
    for (const stored of page) {
      from = stored.sequence;
      events.push({ sequence: Number(stored.sequence), event: new Event(stored.event) });
    }
    if (page.length < PAGE) return events;
  }
}

/**
 * Appends events for one subject, if its last sequence is still `expected`.
 * Each is `[subject, type, data?, options?]`, as for `emit`.
 */
export function append(expected, events) {
  const batch = events.map((args) => outgoing(...args));
  call(() => store.append(BigInt(expected), batch));
}
