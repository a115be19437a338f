/**
 * The event store: an aggregate's events on one subject, read in order and
 * appended on condition that nobody appended since. Import this module only
 * in a handler whose manifest has an `[eventstore]` section.
 *
 * ```ts
 * import { handler } from "eventhost";
 * import * as events from "eventhost/events";
 *
 * export const handle = handler(() => {
 *   const subject = "accounts.events.a1";
 *   const history = events.read(subject);
 *   const version = history.at(-1)?.sequence ?? 0;
 *   events.append(version, [[subject, "com.example.account.opened", { id: "a1" }]]);
 * });
 * ```
 *
 * Appends are buffered and committed with the invocation's other effects.
 * If another event reached the subject after `expected` was read, the host
 * runs the handler again with fresh state. Every error the host returns is
 * thrown as `Permanent`.
 */

import type { EmitOptions, Event, EventData } from "./index.js";

/** An event as the stream holds it. */
export interface Stored {
  /** Its stream sequence: what to expect when appending after it. */
  sequence: number;
  /** The event (`attempt` is 0). */
  event: Event;
}

/** The sequence of the last event on `subject`; 0 if it has none. */
export declare function lastSequence(subject: string): number;

/** Every event on `subject` after sequence `after` (0, the default: from the start), oldest first. */
export declare function read(subject: string, after?: number): Stored[];

/**
 * Appends events, all for one subject (their destination), if the
 * subject's last sequence is still `expected` (0: the subject must be
 * empty). Each event is given as the arguments of `emit`.
 */
export declare function append(
  expected: number,
  events: Array<[subject: string, type: string, data?: EventData, options?: EmitOptions]>,
): void;
