/** Comparing outputs byte for byte. */
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';

/** Every file of an output directory as base64, except the reports (they hold paths and wall times). */
export async function outputFiles(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of (await readdir(dir)).sort()) if (!/report.*\.json$/.test(f)) out[f] = (await readFile(join(dir, f))).toString('base64');
  return out;
}
