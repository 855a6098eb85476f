#!/usr/bin/env node
// The CLI is compiled from src/ by `npm run build` (run automatically by `npm install` / `npm ci` in a clone).
// Before a build there is nothing to load: say in one line what to run instead of a module-not-found stack trace.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const entry = join(root, 'dist', 'src', 'cli', 'entry.js');
if (!existsSync(entry)) {
  process.stderr.write(`moe: not built yet (${entry} is missing): run \`npm install && npm run build\` in ${root}\n`);
  process.exit(1);
}
await import('./../dist/src/cli/entry.js');
