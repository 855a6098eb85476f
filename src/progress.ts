/**
 * What long work reports its progress through: types only, so the pipelines, the runtime and the data loaders
 * depend on this interface and not on its implementation (src/cli/progress.ts: ora spinners, counted bars,
 * plain lines in CI), which re-exports these types instead of declaring its own.
 */
export interface Progress {
  /** start a phase; returns a function that ends it */
  phase(text: string): PhaseHandle;
  /** a plain informational line (stderr), suppressed by --quiet and --json */
  info(text: string): void;
  warn(text: string): void;
}

export interface PhaseHandle {
  /** update a counted bar: done of total units */
  tick(done: number, total: number, unit?: string): void;
  succeed(text?: string): void;
  fail(text?: string): void;
}
