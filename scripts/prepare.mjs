// npm's `prepare` hook: build dist/ from src/ (npm install / npm ci in a clone). `npm install -g .` from a fresh
// clone runs it without the dev dependencies, so the TypeScript compiler may be missing: then the install goes on
// and `moe` says in one line what to run (bin/moe.js), instead of the install failing with `tsc: not found`.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
let tsc;
try {
  tsc = createRequire(join(root, 'package.json')).resolve('typescript/bin/tsc');
} catch {
  tsc = undefined;
}
if (!tsc) {
  if (!existsSync(join(root, 'dist', 'src', 'cli', 'entry.js'))) {
    process.stderr.write(`moe: typescript is not installed here, so dist/ was not built: run \`npm install && npm run build\` in ${root}\n`);
  }
  process.exit(0);
}
const r = spawnSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.json')], { stdio: 'inherit', cwd: root });
process.exit(r.status ?? 1);
