/**
 * The JSON of a safetensors header, parsed straight from its bytes into only what the reader keeps.
 *
 * JSON.parse builds a generic tree first: for a header of many tiny entries (or a `__metadata__` of many keys) the
 * text string, the tree and its property dictionaries peak at 9-35x the header's byte length (a 100 MB header, the
 * allowed maximum, cost 2.4 GB to inspect). Here the bytes are checked in two passes that allocate nothing (UTF-8,
 * then JSON syntax, so every malformed header gives the same error class as before), and a third materialises only
 * the values the reader inspects: each entry's `dtype`, `shape` and `data_offsets` (other keys are skipped, as the
 * reference implementation ignores them) and `__metadata__`. What it keeps is counted as it is built and the parse
 * stops once that passes PARSED_BYTES_PER_HEADER_BYTE times the header's length: hostile density is refused, not
 * paid for.
 */
/** The bound on what a parsed header keeps, per byte of header: README and test/safety/header-memory.test.ts. */
export const PARSED_BYTES_PER_HEADER_BYTE = 4;

/**
 * Modelled heap bytes of what the parse keeps, transient parts included (64-bit V8, no pointer compression), a
 * little above what V8 allocates so that the model bounds the real cost: a string is a 16-byte header plus its
 * characters, a number outside the small-integer range a HeapNumber, an array a JSArray and its backing store, an
 * object or Map entry three words of a hash table at half load.
 */
const COST = { string: 16, number: 16, array: 48, slot: 8, growth: 32, object: 56, entry: 48, pair: 64 } as const;

export type JsonValue = null | boolean | number | string | JsonValue[] | { [k: string]: JsonValue };

/** Why the bytes are not JSON (the message, with a byte position), or undefined when they are. Allocates nothing. */
export function jsonSyntaxError(b: Uint8Array): string | undefined {
  let i = 0;
  const n = b.length;
  const ws = () => {
    while (i < n) {
      const c = b[i]!;
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++;
      else break;
    }
  };
  const bad = (what: string) => `${what} at byte ${i}`;
  const str = (): string | undefined => {
    i++; // opening quote
    for (;;) {
      if (i >= n) return bad('unterminated string');
      const c = b[i]!;
      if (c === 0x22) {
        i++;
        return undefined;
      }
      if (c < 0x20) return bad('control character in string');
      if (c === 0x5c) {
        const e = b[i + 1];
        if (e === 0x75) {
          for (let k = 2; k < 6; k++) if (!isHex(b[i + k])) return bad('bad \\u escape in string');
          i += 6;
        } else if (e === 0x22 || e === 0x5c || e === 0x2f || e === 0x62 || e === 0x66 || e === 0x6e || e === 0x72 || e === 0x74) i += 2;
        else return bad('bad escape in string');
      } else i++;
    }
  };
  const num = (): string | undefined => {
    if (b[i] === 0x2d) i++;
    if (b[i] === 0x30) i++;
    else if (isDigit19(b[i])) while (isDigit(b[i])) i++;
    else return bad('bad number');
    if (b[i] === 0x2e) {
      i++;
      if (!isDigit(b[i])) return bad('bad number');
      while (isDigit(b[i])) i++;
    }
    if (b[i] === 0x65 || b[i] === 0x45) {
      i++;
      if (b[i] === 0x2b || b[i] === 0x2d) i++;
      if (!isDigit(b[i])) return bad('bad number');
      while (isDigit(b[i])) i++;
    }
    return undefined;
  };
  const lit = (word: string): string | undefined => {
    for (let k = 0; k < word.length; k++) if (b[i + k] !== word.charCodeAt(k)) return bad('unexpected token');
    i += word.length;
    return undefined;
  };
  // an object member's name and its ':' (after '{' or ','; the value follows)
  const memberName = (): string | undefined => {
    if (b[i] !== 0x22) return bad('expected a property name');
    const err = str();
    if (err) return err;
    ws();
    if (b[i] !== 0x3a) return bad("expected ':'");
    i++;
    return undefined;
  };
  // iterative, with an explicit stack of open containers (the depth is bounded before this runs, but a scan that
  // cannot overflow the call stack needs no such promise)
  const stack: number[] = [];
  for (;;) {
    // a value
    ws();
    if (i >= n) return bad('unexpected end');
    const c = b[i]!;
    let err: string | undefined;
    if (c === 0x7b || c === 0x5b) {
      i++;
      ws();
      if (b[i] === (c === 0x7b ? 0x7d : 0x5d)) {
        i++;
      } else {
        stack.push(c);
        if (c === 0x7b && (err = memberName())) return err;
        continue;
      }
    } else if (c === 0x22) err = str();
    else if (c === 0x2d || isDigit(c)) err = num();
    else if (c === 0x74) err = lit('true');
    else if (c === 0x66) err = lit('false');
    else if (c === 0x6e) err = lit('null');
    else return bad('unexpected token');
    if (err) return err;
    // after a value: close containers or go on to the next member
    for (;;) {
      ws();
      const top = stack[stack.length - 1];
      if (top === undefined) return i === n ? undefined : bad('unexpected data after the JSON value');
      if (b[i] === 0x2c) {
        i++;
        if (top === 0x7b) {
          ws();
          if ((err = memberName())) return err;
        }
        break;
      }
      if (b[i] === (top === 0x7b ? 0x7d : 0x5d)) {
        i++;
        stack.pop();
        continue;
      }
      return bad(top === 0x7b ? "expected ',' or '}'" : "expected ',' or ']'");
    }
  }
}

const isDigit = (c: number | undefined) => c !== undefined && c >= 0x30 && c <= 0x39;
const isDigit19 = (c: number | undefined) => c !== undefined && c >= 0x31 && c <= 0x39;
const isHex = (c: number | undefined) => c !== undefined && ((c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66));

/** Thrown (and turned into a refusal by the caller) when what the parse keeps would pass its budget. */
export class OverBudget extends Error {}

/**
 * A reader over bytes already known to be UTF-8 and valid JSON (jsonSyntaxError returned undefined): it never meets
 * a syntax error, only decides what to materialise, counting what it keeps against `budget` bytes.
 */
export class HeaderReader {
  i = 0;
  kept = 0;
  private readonly decoder = new TextDecoder('utf-8', { ignoreBOM: true });
  constructor(
    private readonly b: Uint8Array,
    private readonly budget: number,
  ) {}

  /** Run a read whose result is dropped soon after: it counts against the budget only while it runs. */
  transient<T>(read: () => T): T {
    const before = this.kept;
    const v = read();
    this.kept = before;
    return v;
  }

  /** Count `bytes` more as kept; over the budget, stop. */
  keep(bytes: number): void {
    this.kept += bytes;
    if (this.kept > this.budget) throw new OverBudget();
  }

  ws(): void {
    const b = this.b;
    while (this.i < b.length) {
      const c = b[this.i]!;
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) this.i++;
      else break;
    }
  }

  peek(): number {
    this.ws();
    return this.b[this.i]!;
  }

  /** At '{' or '[': enter it; true when it is not empty. */
  open(): boolean {
    this.i++;
    this.ws();
    const c = this.b[this.i]!;
    if (c === 0x7d || c === 0x5d) {
      this.i++;
      return false;
    }
    return true;
  }

  /** After a member: true when another follows (consumes ','), false at the end (consumes '}' or ']'). */
  next(): boolean {
    this.ws();
    const c = this.b[this.i++]!;
    return c === 0x2c;
  }

  /** A property name and its ':' */
  key(): string {
    this.ws();
    const k = this.string();
    this.ws();
    this.i++; // ':'
    return k;
  }

  string(): string {
    const b = this.b;
    const start = ++this.i;
    let escaped = false;
    for (;;) {
      const c = b[this.i]!;
      if (c === 0x22) break;
      if (c === 0x5c) {
        escaped = true;
        this.i += 2;
      } else this.i++;
    }
    const end = this.i++;
    const s = escaped ? (JSON.parse(this.decoder.decode(b.subarray(start - 1, end + 1))) as string) : this.decoder.decode(b.subarray(start, end));
    // one byte a character for Latin-1 text, two otherwise (V8's one- and two-byte strings), in 8-byte words
    const chars = /^[\0-\xff]*$/.test(s) ? s.length : 2 * s.length;
    this.keep(COST.string + 8 * Math.ceil(chars / 8));
    return s;
  }

  /** Skip a value without materialising it (the bytes are valid JSON, so only strings need care). */
  skip(): void {
    const b = this.b;
    const c = this.peek();
    if (c !== 0x7b && c !== 0x5b && c !== 0x22) {
      while (this.i < b.length && !isEnd(b[this.i]!)) this.i++;
      return;
    }
    let depth = 0;
    do {
      const d = b[this.i++]!;
      if (d === 0x22) {
        while (b[this.i] !== 0x22) this.i += b[this.i] === 0x5c ? 2 : 1;
        this.i++;
      } else if (d === 0x7b || d === 0x5b) depth++;
      else if (d === 0x7d || d === 0x5d) depth--;
    } while (depth > 0);
  }

  /** Materialise any value, counting it. Objects are built with own data properties (a `__proto__` key included). */
  value(): JsonValue {
    const c = this.peek();
    if (c === 0x22) return this.string();
    if (c === 0x7b) {
      this.keep(COST.object);
      const pairs: [string, JsonValue][] = [];
      if (this.open()) {
        do {
          const k = this.key();
          pairs.push([k, this.value()]);
          // the property, and the [key, value] pair it is built from
          this.keep(COST.entry + COST.pair);
        } while (this.next());
      }
      return Object.fromEntries(pairs) as { [k: string]: JsonValue };
    }
    if (c === 0x5b) {
      this.keep(COST.array);
      const a: JsonValue[] = [];
      if (this.open()) {
        do {
          a.push(this.value());
          // while it grows, a store and the ones it replaced
          this.keep(COST.growth);
        } while (this.next());
      }
      // push grows the store ahead (17 slots for one element); the copy is exact, as JSON.parse's arrays are
      this.kept -= (COST.growth - COST.slot) * a.length;
      return a.slice();
    }
    if (c === 0x74) {
      this.i += 4;
      return true;
    }
    if (c === 0x66) {
      this.i += 5;
      return false;
    }
    if (c === 0x6e) {
      this.i += 4;
      return null;
    }
    const start = this.i;
    while (this.i < this.b.length && !isEnd(this.b[this.i]!)) this.i++;
    const v = Number(this.decoder.decode(this.b.subarray(start, this.i)));
    // a 32-bit integer is a Smi, stored in its slot; anything else is a HeapNumber
    if (!(Number.isInteger(v) && Math.abs(v) < 2 ** 31) || Object.is(v, -0)) this.keep(COST.number);
    return v;
  }
}

const isEnd = (c: number) => c === 0x2c || c === 0x7d || c === 0x5d || c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d;

/**
 * Modelled bytes of one table entry beyond its name and shape: the TensorInfo (five fields; offsets past the Smi
 * range boxed), its entry in the Map of entries as read and in the final table, and its slot in the sorted list.
 */
export function tensorEntryCost(end: number): number {
  return 64 + (end < 2 ** 31 ? 0 : 2 * COST.number) + 2 * COST.entry + 2 * COST.slot;
}

/**
 * JSON.parse + Object.entries list an object's array-index keys first, ascending, then the rest in first-appearance
 * order. The reader reports the first bad entry in that order, as it always has: these are the keys that go first.
 */
export function arrayIndexKeys(keys: Iterable<string>): string[] {
  const index: string[] = [];
  for (const k of keys) if (isArrayIndex(k)) index.push(k);
  return index.sort((a, b) => Number(a) - Number(b));
}

export function isArrayIndex(k: string): boolean {
  return /^(0|[1-9]\d*)$/.test(k) && Number(k) < 2 ** 32 - 1;
}
