/**
 * Write eventhost event handlers in TypeScript or JavaScript.
 *
 * A handler is a function from one CloudEvent to nothing, built into a
 * WebAssembly component with componentize-js (`eventhost-build`). The host
 * owns everything around it — acking, retries, dead letters, deduplication,
 * limits — so the function holds only business logic:
 *
 * ```ts
 * import { handler, emit, Permanent } from "eventhost";
 *
 * export const handle = handler((event) => {
 *   const order = event.json<{ order_id: string; total: number }>();
 *   if (order.total < 0) throw new Permanent(`order ${order.order_id}: negative total`);
 *   emit("payments.completed", "com.example.payment.completed", { order_id: order.order_id });
 * });
 * ```
 *
 * How a call ends decides what the host does with the event:
 * - it returns (or its promise resolves): the emitted events are published
 *   and state changes committed, all or nothing;
 * - it throws {@link Retryable}: nothing is published, the event is retried;
 * - it throws {@link Permanent}: nothing is published, the event goes to the
 *   dead-letter queue at once;
 * - it throws anything else (a bug: a `TypeError`, `throw "oops"`): the
 *   invocation traps, like a Rust panic. The message is written to stderr,
 *   which the host puts into the failure it logs and dead-letters; traps are
 *   retried like retryable errors.
 *
 * Events passed to {@link emit} are published only after the handler
 * succeeds, so a handler failing half-way publishes nothing. Each event runs
 * in a fresh instance: nothing in memory survives from one event to the next.
 *
 * This module imports only what every handler is granted (emit, logging,
 * config). Key-value buckets are in `eventhost/kv`, the event store in
 * `eventhost/events`: import them only with the matching manifest section.
 *
 * The contract is the WIT package `eventhost:handler@0.2.0`.
 */

/** Base class of the two failures the host understands. */
export declare class HandlerError extends Error {}

/** A transient failure (a dependency unavailable): the host retries the event later. */
export declare class Retryable extends HandlerError {}

/** The event can never be handled (invalid data, a broken rule): it is dead-lettered at once. */
export declare class Permanent extends HandlerError {}

/** The event record as the host passes it to the component's `handle` export. */
export interface RawEvent {
  id: string;
  source: string;
  specversion: string;
  type: string;
  datacontenttype?: string;
  dataschema?: string;
  subject?: string;
  time?: string;
  extensions: Array<[string, string]>;
  data?: Uint8Array;
  attempt: number;
}

/** The CloudEvent being handled. */
export declare class Event {
  constructor(raw: RawEvent);
  readonly id: string;
  readonly source: string;
  readonly specversion: string;
  /** The CloudEvents `type` attribute. */
  readonly type: string;
  readonly subject: string | undefined;
  /** RFC 3339 timestamp. */
  readonly time: string | undefined;
  readonly datacontenttype: string | undefined;
  readonly dataschema: string | undefined;
  /** Extension attributes (`partitionkey`, `traceparent`, …) by name. */
  readonly extensions: Readonly<Record<string, string>>;
  /** The data, byte for byte as the producer sent it. */
  readonly data: Uint8Array | undefined;
  /**
   * Which attempt this is: 1 the first time, 2 after one failure, …
   * Retrying is the host's job; this is for logging and for handlers that
   * degrade gracefully on late attempts.
   */
  readonly attempt: number;
  /** An extension attribute, or undefined. */
  extension(name: string): string | undefined;
  /** The data as UTF-8 text ("" without data); data that is not UTF-8 is {@link Permanent}. */
  text(): string;
  /**
   * The data parsed as JSON. Missing or malformed data is {@link Permanent}.
   * The type parameter is not checked at run time: validate what matters.
   */
  json<T = any>(): T;
}

/** Optional attributes of an emitted event. */
export interface EmitOptions {
  /** The CloudEvents `subject` (what the event is about). */
  subject?: string;
  /** Overrides the id the host derives (from the handler, the input event and the emit's position). */
  id?: string;
  /** Overrides the `source` the host fills in. */
  source?: string;
  time?: string;
  dataschema?: string;
  /** Defaults to `application/json` for JSON data and `text/plain; charset=utf-8` for strings. */
  datacontenttype?: string;
  /** Extension attributes; names are lower-case ASCII letters and digits. */
  extensions?: Record<string, string | number | boolean> | Array<[string, string]>;
}

/** The WIT `outgoing-event` record. */
export interface OutgoingEvent {
  destination: string;
  type: string;
  id?: string;
  source?: string;
  subject?: string;
  time?: string;
  datacontenttype?: string;
  dataschema?: string;
  extensions: Array<[string, string]>;
  data?: Uint8Array;
}

/** Event data: bytes and strings are sent as they are, anything else as JSON. */
export type EventData = Uint8Array | ArrayBuffer | string | number | boolean | object | null | undefined;

/**
 * Asks the host to publish an event of CloudEvents type `type` on the NATS
 * subject `destination` (one of the manifest's `publish` subjects). It is
 * published only if the handler succeeds. A refused emit (a destination not
 * granted, a malformed event, a limit) throws {@link Permanent}.
 */
export declare function emit(destination: string, type: string, data?: EventData, options?: EmitOptions): void;

/** Builds the WIT record `emit` sends (used by `eventhost/events` too). */
export declare function outgoing(
  destination: string,
  type: string,
  data?: EventData,
  options?: EmitOptions,
): OutgoingEvent;

/** A value of the manifest's `[config]` table, as text. */
export declare function config(key: string): string | undefined;
export declare function config(key: string, fallback: string): string;

/** A config value as a number, or `fallback` when absent; a value that is not a number is {@link Permanent}. */
export declare function configNumber(key: string): number | undefined;
export declare function configNumber(key: string, fallback: number): number;

/**
 * Logging into the host's structured log, tagged with the handler and the
 * event. Parts are joined with spaces; non-strings are written as JSON.
 */
export declare const log: {
  readonly trace: (...parts: unknown[]) => void;
  readonly debug: (...parts: unknown[]) => void;
  readonly info: (...parts: unknown[]) => void;
  readonly warn: (...parts: unknown[]) => void;
  readonly error: (...parts: unknown[]) => void;
};

/**
 * `fetch` through the host's `wasi:http` (manifest `[http]`, to its
 * `allowed_outbound_hosts` only), with failures as handler errors: no
 * response (a refused connection, a timeout, a request the host denies) is
 * {@link Retryable}. The response is returned whatever its status (see
 * {@link checkStatus}). A request is sent again when the event is retried;
 * the host adds an `Idempotency-Key` header that is the same on every retry
 * of the same event.
 *
 * Known limit (StarlingMonkey in componentize-js 0.23): a request with a
 * body that gets no response (always when the host denies it, often when
 * the connection is refused) may make the engine abort instead of
 * rejecting, so the invocation traps (and is retried like a retryable
 * error); the trap's message names the request. GET requests reject
 * cleanly.
 */
export declare function request(url: string, init?: RequestInit): Promise<Response>;

/**
 * The response if its status is below 400; otherwise throws what the answer
 * calls for: 408, 429 and 5xx are {@link Retryable}, other 4xx {@link Permanent}.
 */
export declare function checkStatus(response: Response): Promise<Response>;

/** A response body parsed as JSON; a body that is not JSON is {@link Permanent}. */
export declare function readJson<T = any>(response: Response): Promise<T>;

/** What the component's `handle` export returns: the WIT `result<_, handler-error>`. */
export type HandleResult =
  | { tag: "ok"; val: undefined }
  | { tag: "err"; val: { tag: "retryable" | "permanent"; val: string } };

/**
 * Turns `fn` into the component's export. The handler module must export
 * it as `handle`:
 *
 * ```ts
 * export const handle = handler(async (event) => { ... });
 * ```
 *
 * `fn` may be async (to `await` a `fetch`). {@link Retryable} and
 * {@link Permanent} become the WIT `handler-error`; any other thrown value
 * makes the invocation trap, its message on stderr.
 */
export declare function handler(fn: (event: Event) => void | Promise<void>): (raw: RawEvent) => Promise<HandleResult>;
