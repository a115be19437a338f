// eventhost SDK for JavaScript and TypeScript handlers: a thin layer over
// the host imports of the `eventhost:handler@0.2.0` WIT world. The types and
// the documentation are in index.d.ts; the build tool is build.mjs.
//
// This module imports only what every handler is granted (emit, log,
// config). Key-value state is in `eventhost/kv` and the event store in
// `eventhost/events`, so a handler that does not use them never imports
// their interfaces (the host refuses a component importing a capability its
// manifest does not grant).

import { emit as hostEmit } from 'eventhost:handler/emitter@0.2.0';
import { log as hostLog } from 'eventhost:handler/logging@0.2.0';
import { get as hostConfig } from 'eventhost:handler/config@0.2.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** Base of the two failures the host understands. */
export class HandlerError extends Error {}

/** A transient failure: the host retries the event later. */
export class Retryable extends HandlerError {
  get name() {
    return 'Retryable';
  }
}

/** The event can never be handled: the host dead-letters it at once. */
export class Permanent extends HandlerError {
  get name() {
    return 'Permanent';
  }
}

/** The CloudEvent being handled. */
export class Event {
  constructor(raw) {
    this.id = raw.id;
    this.source = raw.source;
    this.specversion = raw.specversion;
    this.type = raw.type;
    this.subject = raw.subject ?? undefined;
    this.time = raw.time ?? undefined;
    this.datacontenttype = raw.datacontenttype ?? undefined;
    this.dataschema = raw.dataschema ?? undefined;
    this.extensions = Object.freeze(Object.fromEntries(raw.extensions ?? []));
    this.data = raw.data ?? undefined;
    this.attempt = raw.attempt ?? 0;
  }

  /** An extension attribute such as `partitionkey`, or undefined. */
  extension(name) {
    return Object.hasOwn(this.extensions, name) ? this.extensions[name] : undefined;
  }

  /** The data as UTF-8 text ("" without data). */
  text() {
    if (this.data === undefined) return '';
    try {
      return decoder.decode(this.data);
    } catch {
      throw new Permanent('invalid event data: not UTF-8');
    }
  }

  /** The data parsed as JSON; missing or malformed data is permanent. */
  json() {
    if (this.data === undefined) throw new Permanent('event has no data');
    try {
      return JSON.parse(this.text());
    } catch (err) {
      if (err instanceof Permanent) throw err;
      throw new Permanent(`invalid event data: ${err.message}`);
    }
  }
}

/**
 * The WIT `outgoing-event` for `emit` and the event store: bytes and
 * strings are sent as they are, anything else as JSON.
 */
export function outgoing(destination, type, data, options = {}) {
  let bytes;
  let contentType = options.datacontenttype;
  if (data === undefined || data === null) {
    bytes = undefined;
  } else if (data instanceof Uint8Array) {
    bytes = data;
  } else if (data instanceof ArrayBuffer) {
    bytes = new Uint8Array(data);
  } else if (typeof data === 'string') {
    bytes = encoder.encode(data);
    contentType ??= 'text/plain; charset=utf-8';
  } else {
    const json = JSON.stringify(data);
    if (json === undefined) throw new Permanent(`emit ${type}: data is not JSON-serializable`);
    bytes = encoder.encode(json);
    contentType ??= 'application/json';
  }
  const extensions = options.extensions ?? {};
  return {
    destination,
    type,
    id: options.id,
    source: options.source,
    subject: options.subject,
    time: options.time,
    datacontenttype: contentType,
    dataschema: options.dataschema,
    extensions: (Array.isArray(extensions) ? extensions : Object.entries(extensions)).map(
      ([name, value]) => [name, String(value)],
    ),
    data: bytes,
  };
}

const EMIT_ERRORS = {
  'destination-not-allowed': 'destination not allowed',
  'invalid-event': 'invalid event',
  'limit-exceeded': 'limit exceeded',
};

/**
 * Asks the host to publish an event. It is published only if the handler
 * succeeds. A refused emit is permanent (retrying would emit the same).
 */
export function emit(destination, type, data, options) {
  const event = outgoing(destination, type, data, options);
  try {
    hostEmit(event);
  } catch (err) {
    const payload = err?.payload;
    if (payload?.tag === undefined) throw err;
    throw new Permanent(`emit refused: ${EMIT_ERRORS[payload.tag] ?? payload.tag}: ${payload.val}`);
  }
}

/** A value of the manifest's `[config]` table, or `fallback`. */
export function config(key, fallback) {
  return hostConfig(key) ?? fallback;
}

/** A config value as a number, or `fallback`; one that is not a number is permanent. */
export function configNumber(key, fallback) {
  const raw = hostConfig(key);
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (raw.trim() === '' || Number.isNaN(value)) {
    throw new Permanent(`config \`${key}\` = ${JSON.stringify(raw)}: not a number`);
  }
  return value;
}

function describe(part) {
  if (typeof part === 'string') return part;
  if (part instanceof Error) return `${part.name}: ${part.message}`;
  try {
    return JSON.stringify(part) ?? String(part);
  } catch {
    return String(part);
  }
}

function logAt(level) {
  return (...parts) => hostLog(level, parts.map(describe).join(' '));
}

/** Logging into the host's structured log, tagged with handler and event. */
export const log = Object.freeze({
  trace: logAt('trace'),
  debug: logAt('debug'),
  info: logAt('info'),
  warn: logAt('warn'),
  error: logAt('error'),
});

/**
 * `fetch` for outbound HTTP (manifest `[http]`), with failures as handler
 * errors: no response (refused connection, timeout, a request the host
 * denies: the engine tells them apart no better than "NetworkError") is
 * retryable. The response is returned whatever its status; see
 * `checkStatus`.
 *
 * StarlingMonkey (componentize-js 0.23) may abort instead of rejecting when
 * a request with a body gets no response (always when the host denies it;
 * often when the connection is refused): the invocation then traps, and
 * traps are retried like retryable errors. The line this writes to stderr
 * first names the request in the trap's message. (Sending the body as
 * bytes and taking the rejection with `.then` made the abort rarer in
 * tests.)
 */
export async function request(url, init = {}) {
  const method = (init.method ?? 'GET').toUpperCase();
  console.error(`eventhost: ${method} ${url}`);
  const body = typeof init.body === 'string' ? encoder.encode(init.body) : init.body;
  const settled = await fetch(url, { ...init, body }).then(
    (response) => ({ response }),
    (error) => ({ error }),
  );
  if (settled.response) return settled.response;
  const why = settled.error instanceof Error ? settled.error.message : String(settled.error);
  throw new Retryable(`${method} ${url} failed: ${why}`);
}

/**
 * The response if its status is a success; otherwise the error the answer
 * calls for: 408, 429 and 5xx are retryable, other 4xx permanent.
 */
export async function checkStatus(response) {
  if (response.status < 400) return response;
  const body = (await response.text()).slice(0, 200);
  const why = `HTTP ${response.status}: ${body}`;
  const retry = response.status === 408 || response.status === 429 || response.status >= 500;
  throw retry ? new Retryable(why) : new Permanent(why);
}

/** A response body parsed as JSON; a body that is not JSON is permanent. */
export async function readJson(response) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Permanent(`response body is not the JSON expected: ${err.message}`);
  }
}

/**
 * The result that makes the invocation trap with `err` on stderr, which the
 * host puts into the failure it logs and dead-letters.
 *
 * componentize-js (0.23) takes any value thrown out of the export as the
 * error payload: one that is not a `handler-error` variant then fails its
 * lowering with a TypeError about the bindings, which traps. Instead, this
 * result throws an Error of its own when its `val` is read, which the
 * bindings do outside their try/catch: the Error escapes the export, and
 * StarlingMonkey writes its message to stderr and traps.
 */
function crash(err) {
  let message = `handler crashed: ${describe(err)}`;
  // StarlingMonkey prints the stack of the Error it reports, this one's:
  // add the frames where `err` was thrown (positions in the bundle).
  const stack = err instanceof Error && typeof err.stack === 'string' ? err.stack.trim() : '';
  if (stack) message += `\nthrown at:\n  ${stack.split('\n').join('\n  ')}`;
  const error = new Error(message);
  return {
    tag: 'err',
    get val() {
      throw error;
    },
  };
}

/**
 * Turns `fn(event)` into the component's `handle` export:
 * `export const handle = handler(async (event) => { ... })`.
 */
export function handler(fn) {
  return async function handle(raw) {
    try {
      await fn(new Event(raw));
    } catch (err) {
      if (err instanceof Retryable) return { tag: 'err', val: { tag: 'retryable', val: err.message } };
      if (err instanceof Permanent) return { tag: 'err', val: { tag: 'permanent', val: err.message } };
      return crash(err);
    }
    return { tag: 'ok', val: undefined };
  };
}
