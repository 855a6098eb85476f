/**
 * Child process of header-memory.test.ts: parse one safetensors header and print what it cost, as JSON on stdout:
 * `retained` (heap still held by the parsed header after a full GC) and `peak` (growth of the maximum resident set
 * while parsing), both in bytes, and `error` when the header was refused. Run with --expose-gc.
 */
import { readFileSync } from 'node:fs';
import { parseHeader } from '../../src/io/safetensors.js';

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with --expose-gc');
const file = readFileSync(process.argv[2]!);
const len = Number(file.readBigUInt64LE(0));
const bytes = new Uint8Array(file.buffer, file.byteOffset + 8, len);
gc();
const heap0 = process.memoryUsage().heapUsed;
// the peak is measured from here: what the process already holds (the file itself) is not the parse's
const rss0 = Math.max(process.memoryUsage().rss, process.resourceUsage().maxRSS * 1024);
let header: unknown;
let error: string | undefined;
try {
  header = parseHeader(bytes, file.byteLength, 'probe');
} catch (e) {
  error = `${(e as { code?: string }).code}: ${(e as Error).message}`;
}
const peak = process.resourceUsage().maxRSS * 1024 - rss0;
gc();
const retained = process.memoryUsage().heapUsed - heap0;
process.stdout.write(
  JSON.stringify({ headerBytes: len, retained, peak, error, tensors: (header as { tensors?: Map<string, unknown> })?.tensors?.size }) + '\n',
);
