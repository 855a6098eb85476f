/** Option parsers shared by the commands: a malformed value is a one-line usage error naming the flag. */
import { fail } from '../errors.js';
import type { ShardSpec } from '../model/shard.js';

export type { ShardSpec };

/** An integer, sign allowed (the command checks the range and says what it needs). */
export function wholeNumber(flag: string) {
  return (v: string): number => {
    if (!/^-?\d+$/.test(v.trim())) fail('Usage', `${flag} must be a whole number, got '${v}'`);
    return Number(v);
  };
}

/** A count: tokens, windows, steps. */
export function count(flag: string) {
  return (v: string): number => {
    if (!/^\d+$/.test(v.trim())) fail('Usage', `${flag} must be a positive whole number, got '${v}'`);
    return Number(v);
  };
}

export function number(flag: string) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n)) fail('Usage', `${flag} must be a number, got '${v}'`);
    return n;
  };
}

export const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(2)} MiB`;

/** `--shard i/n` (0-based): this job's share of work split n ways, as a CI matrix or an indexed job hands it out. */
export function shard(flag: string) {
  return (v: string): ShardSpec => {
    const m = /^(\d+)\/(\d+)$/.exec(v.trim());
    if (!m) fail('Usage', `${flag} must be i/n with 0 <= i < n (e.g. 0/4), got '${v}'`);
    const index = Number(m[1]);
    const count = Number(m[2]);
    if (count < 1 || index >= count) fail('Usage', `${flag} must be i/n with 0 <= i < n (e.g. 0/4), got '${v}'`);
    return { index, count };
  };
}
