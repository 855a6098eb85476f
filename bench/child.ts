/**
 * The CLI in a child process that reports its own peak RSS (getrusage maxrss) on exit, optionally with an RSS
 * sample every second: the measurement every memory bench shares.
 */
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';

export interface ChildRun {
  seconds: number;
  /** peak resident set, bytes (NaN if the child died before reporting) */
  maxRss: number;
  /** [second, RSS MiB] samples, with `trace` */
  trace: Array<[number, number]>;
  status: number | null;
  stdout: string;
  stderr: string;
}

export interface ChildOptions {
  /** the CLI module exporting main(argv): the compiled dist/src/cli/main.js by default; a .ts entry runs under tsx */
  entry?: string;
  cwd?: string;
  /** sample RSS every second (a profile that grows layer by layer, or stays flat) */
  trace?: boolean;
}

export function runCli(args: readonly string[], opts: ChildOptions = {}): ChildRun {
  const entry = resolve(opts.entry ?? 'dist/src/cli/main.js');
  const sampler = opts.trace
    ? 'const t0 = Date.now(); const tr = []; setInterval(() => tr.push([Math.round((Date.now() - t0) / 1000), Math.round(process.memoryUsage().rss / 1048576)]), 1000).unref();'
    : 'const tr = [];';
  const script = `${sampler} import(${JSON.stringify(entry)}).then((m) => m.main(process.argv)).then((c) => { process.stderr.write('rss_trace ' + JSON.stringify(tr) + '\\nmaxrss_kb ' + process.resourceUsage().maxRSS + '\\n'); process.exit(c); });`;
  const loader = entry.endsWith('.ts') ? ['--import', 'tsx'] : [];
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [...loader, '--input-type=module', '-e', script, 'moe', ...args], {
    encoding: 'utf8',
    maxBuffer: 256 << 20,
    ...(opts.cwd ? { cwd: opts.cwd } : {}),
  });
  const m = /maxrss_kb (\d+)/.exec(r.stderr);
  const t = /rss_trace (.*)/.exec(r.stderr);
  return {
    seconds: (performance.now() - t0) / 1000,
    maxRss: m ? Number(m[1]) * 1024 : NaN,
    trace: t ? JSON.parse(t[1]!) : [],
    status: r.status,
    stdout: r.stdout,
    stderr: r.stderr,
  };
}
