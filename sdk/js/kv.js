// Key-value state: `wasi:keyvalue` buckets, as the manifest's `[keyvalue]`
// section grants them. Only handlers that import `eventhost/kv` import these
// interfaces. Types and documentation: kv.d.ts.

import { open } from 'wasi:keyvalue/store@0.2.0-draft';
import { increment as hostIncrement } from 'wasi:keyvalue/atomics@0.2.0-draft';
import { Permanent } from './index.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/**
 * Every error the host returns is deterministic (a grant, a key, a limit):
 * retrying would meet it again, so all are permanent. Outages stop the
 * invocation before the guest sees them (as in the Rust SDK).
 */
function failure(bucket, err) {
  const payload = err?.payload;
  switch (payload?.tag) {
    case 'no-such-store':
    case 'access-denied':
      return new Permanent(
        `key-value bucket ${JSON.stringify(bucket)}: access denied (see the manifest's [keyvalue] grants)`,
      );
    case 'other':
      return new Permanent(`key-value bucket ${JSON.stringify(bucket)}: ${payload.val}`);
    default:
      return err;
  }
}

/** An open bucket. */
export class Bucket {
  /** Opens a bucket the manifest grants; any other name is permanent. */
  static open(name) {
    try {
      return new Bucket(name, open(name));
    } catch (err) {
      throw failure(name, err);
    }
  }

  #inner;

  constructor(name, inner) {
    this.name = name;
    this.#inner = inner;
  }

  #call(what) {
    try {
      return what();
    } catch (err) {
      throw failure(this.name, err);
    }
  }

  /** The bytes at `key`, or undefined. */
  get(key) {
    return this.#call(() => this.#inner.get(key)) ?? undefined;
  }

  /** The value at `key` as UTF-8 text, or undefined. */
  getText(key) {
    const bytes = this.get(key);
    if (bytes === undefined) return undefined;
    try {
      return decoder.decode(bytes);
    } catch {
      throw new Permanent(`${this.name}/${key}: not UTF-8`);
    }
  }

  /** The value at `key` parsed as JSON, or `fallback`; other bytes are permanent. */
  getJson(key, fallback) {
    const text = this.getText(key);
    if (text === undefined) return fallback;
    try {
      return JSON.parse(text);
    } catch (err) {
      throw new Permanent(`${this.name}/${key}: not the expected JSON: ${err.message}`);
    }
  }

  /** Stores bytes, or a string as UTF-8, at `key`. */
  put(key, value) {
    const bytes = typeof value === 'string' ? encoder.encode(value) : value;
    this.#call(() => this.#inner.set(key, bytes));
  }

  /** Stores `value` as JSON at `key`. */
  putJson(key, value) {
    this.put(key, JSON.stringify(value));
  }

  delete(key) {
    this.#call(() => this.#inner.delete(key));
  }

  exists(key) {
    return this.#call(() => this.#inner.exists(key));
  }

  /** Adds `delta` to the decimal number at `key` (0 when absent); returns the new value. */
  increment(key, delta = 1) {
    if (!(typeof delta === 'bigint' || Number.isSafeInteger(delta)) || delta < 0) {
      throw new Permanent(`${this.name}/${key}: increment by ${delta}: not a non-negative integer`);
    }
    return Number(this.#call(() => hostIncrement(this.#inner, key, BigInt(delta))));
  }

  /** Every key in the bucket, as this invocation sees it. */
  keys() {
    const keys = [];
    let cursor;
    do {
      const page = this.#call(() => this.#inner.listKeys(cursor));
      keys.push(...page.keys);
      cursor = page.cursor ?? undefined;
    } while (cursor !== undefined);
    return keys;
  }
}

/** `Bucket.open(name)`. */
export function openBucket(name) {
  return Bucket.open(name);
}
