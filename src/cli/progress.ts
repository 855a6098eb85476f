/**
 * Progress for long work: an ora spinner per phase and a counted bar with ETA inside it. Quiet (--quiet),
 * machine (--json) and non-TTY runs get no spinner; non-TTY runs get one plain line per finished phase on stderr,
 * so CI logs show what happened without carriage-return noise.
 */
import ora, { type Ora } from 'ora';

export interface ProgressOptions {
  quiet?: boolean;
  json?: boolean;
}

// the interface is declared once, types only, in src/progress.ts (the pipelines depend on it, not on ora)
import type { PhaseHandle, Progress } from '../progress.js';
export type { PhaseHandle, Progress };

export function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--';
  if (seconds < 60) return `${Math.round(seconds)}s`;
  const m = Math.floor(seconds / 60);
  const s = Math.round(seconds % 60);
  if (m < 60) return `${m}m${String(s).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}

export function renderBar(done: number, total: number, width = 24): string {
  const frac = total > 0 ? Math.min(1, done / total) : 0;
  const full = Math.round(frac * width);
  return `[${'#'.repeat(full)}${'.'.repeat(width - full)}]`;
}

export function createProgress(opts: ProgressOptions = {}, stream: NodeJS.WriteStream = process.stderr): Progress {
  const silent = !!opts.quiet || !!opts.json;
  // a terminal that reports 0 (or no) columns, as under `script` and some CI runners, is no terminal: the spinner's
  // line wrapping divides by the width and would loop writing cursor codes
  const tty = !!stream.isTTY && !process.env.CI && Number.isFinite(stream.columns) && stream.columns > 0;
  return {
    phase(text: string): PhaseHandle {
      const started = Date.now();
      let spinner: Ora | undefined;
      if (!silent && tty) spinner = ora({ text, stream }).start();
      const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)}s`;
      return {
        tick(done, total, unit = '') {
          if (!spinner) return;
          const secs = (Date.now() - started) / 1000;
          const eta = done > 0 ? (secs / done) * (total - done) : NaN;
          spinner.text = `${text} ${renderBar(done, total)} ${done}/${total}${unit ? ' ' + unit : ''} ETA ${formatEta(eta)}`;
        },
        succeed(t) {
          const msg = `${t ?? text} (${elapsed()})`;
          if (spinner) spinner.succeed(msg);
          else if (!silent) stream.write(`✔ ${msg}\n`);
        },
        fail(t) {
          const msg = t ?? text;
          if (spinner) spinner.fail(msg);
          else if (!silent) stream.write(`✖ ${msg}\n`);
        },
      };
    },
    info(text) {
      if (!silent) stream.write(text + '\n');
    },
    warn(text) {
      if (!opts.json || !opts.quiet) stream.write(`warning: ${text}\n`);
    },
  };
}
