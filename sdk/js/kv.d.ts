/**
 * Key-value state: `wasi:keyvalue` buckets, as the manifest's `[keyvalue]`
 * section grants them. Import this module only in a handler whose manifest
 * has that section (the build refuses otherwise).
 *
 * ```ts
 * import { handler } from "eventhost";
 * import { Bucket } from "eventhost/kv";
 *
 * export const handle = handler(() => {
 *   const counts = Bucket.open("counts");
 *   counts.putJson("seen", counts.getJson("seen", 0) + 1);
 * });
 * ```
 *
 * Reads see this invocation's own writes. Writes are buffered by the host
 * and committed only if the handler succeeds, together with its emitted
 * events. If a key changed between this invocation's read and its commit,
 * the host runs the handler again with fresh state: the handler never has
 * to retry a race itself.
 *
 * Every error the host returns (a bucket not granted, a key or value it
 * refuses, a limit) is deterministic, so it is thrown as `Permanent`.
 */

/** An open bucket. */
export declare class Bucket {
  private constructor();
  /** Opens a bucket the manifest grants; any other name throws `Permanent`. */
  static open(name: string): Bucket;
  readonly name: string;
  /** The bytes at `key`, or undefined. */
  get(key: string): Uint8Array | undefined;
  /** The value at `key` as UTF-8 text, or undefined. */
  getText(key: string): string | undefined;
  /** The value at `key` parsed as JSON, or undefined / `fallback` when absent. Other bytes throw `Permanent`. */
  getJson<T = any>(key: string): T | undefined;
  getJson<T>(key: string, fallback: T): T;
  /** Stores bytes, or a string as UTF-8, at `key`. */
  put(key: string, value: Uint8Array | string): void;
  /** Stores `value` as JSON at `key`. */
  putJson(key: string, value: unknown): void;
  delete(key: string): void;
  exists(key: string): boolean;
  /**
   * Adds `delta` (default 1) to the decimal number at `key` (0 when
   * absent) and returns the new value.
   */
  increment(key: string, delta?: number | bigint): number;
  /** Every key in the bucket, as this invocation sees it. */
  keys(): string[];
}

/** `Bucket.open(name)`. */
export declare function openBucket(name: string): Bucket;
