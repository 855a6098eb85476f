/**
 * A command's commander definition, generated from its descriptor: one flag per option (placeholder, parser,
 * help with the choices and the default the schema applies), its methods and worked examples under --help, and
 * an action that hands the given values, and only those, to the command: defaults and validation are the
 * schema's, so the command line, recipes and library calls behave alike.
 */
import { type Command, Option } from 'commander';
import { createProgress } from '../cli/progress.js';
import { runFingerprint } from '../io/fingerprint.js';
import { deferPublish, withRunIdentity } from '../io/output.js';
import { count, number, shard, wholeNumber } from '../cli/options.js';
import { DATA_NEEDS, type AnyCommand } from './descriptor.js';
import { commandOptions, type OptionInfo } from './schema.js';
import { inputPaths } from './validate.js';

const collect = (v: string, prev: string[] = []) => [...prev, v];

// biome-ignore lint/suspicious/noExplicitAny: commander's parsers take (value, previous)
function parserOf(info: OptionInfo): ((v: string, prev: any) => any) | undefined {
  const f = info.flag;
  switch (info.kind) {
    case 'int':
      return wholeNumber(f);
    case 'number':
      return number(f);
    case 'enum':
      if (info.choices?.every((c) => typeof c === 'number')) return number(f);
      // widths or names (--dense-bits 4 or q4_k): digits are the number choice, as in lists below
      if (info.choices?.some((c) => typeof c === 'number')) return (v: string) => (/^\s*\d+\s*$/.test(v) ? Number(v) : v.trim().toLowerCase());
      return undefined;
    case 'list':
      // whole numbers; where the choices also have names (--candidates q4_k,q5_k with --format gguf), those in any case
      return info.choices?.some((c) => typeof c === 'string')
        ? (v: string) => v.split(',').map((s) => (/^\s*\d+\s*$/.test(s) ? count(f)(s) : s.trim().toLowerCase()))
        : (v: string) => v.split(',').map((s) => count(f)(s));
    case 'repeat':
      return collect as (v: string) => string[];
    case 'shard':
      return shard(f);
    default:
      return undefined;
  }
}

export function showDefault(info: OptionInfo): string | undefined {
  if (info.defaultText !== undefined) return info.defaultText;
  const d = info.default;
  if (d === undefined || d === false || (info.kind === 'boolean' && d === true) || (Array.isArray(d) && d.length === 0)) return undefined;
  return Array.isArray(d) ? d.join(',') : String(d);
}

/** The --help line of an option: its help, then choices, default and whether it is required. */
export function helpLine(info: OptionInfo): string {
  const extra: string[] = [];
  if (info.choices && info.kind === 'enum') extra.push(`choices: ${info.choices.join(', ')}`);
  else if (info.choices) extra.push(`each one of ${info.choices.join(', ')}`);
  const d = showDefault(info);
  if (d !== undefined) extra.push(`default: ${d}`);
  if (info.required) extra.push('required');
  return extra.length ? `${info.help} (${extra.join('; ')})` : info.help;
}

export function commanderOption(info: OptionInfo): Option {
  const term =
    info.kind === 'boolean' ? info.flag : info.kind === 'variadic' ? `${info.flag} <${info.arg ?? 'value'}...>` : `${info.flag} <${info.arg ?? 'value'}>`;
  const opt = new Option(term, helpLine(info));
  const parse = parserOf(info);
  if (parse) opt.argParser(parse);
  return opt;
}

/** Methods and worked examples, shown after the options. */
export function helpAfter(d: AnyCommand): string {
  const parts: string[] = [];
  for (const fam of d.methods ?? []) {
    const w = Math.max(...fam.methods.map((m) => m.name.length));
    parts.push(`${fam.title} (${fam.option}):`);
    for (const m of fam.methods) {
      parts.push(`  ${m.name.padEnd(w)}  ${m.summary}`);
      parts.push(`  ${''.padEnd(w)}  needs ${DATA_NEEDS[m.needs]}${m.paper ? `; ${m.paper}` : ''}`);
    }
    parts.push('');
  }
  parts.push(d.examples.length > 1 ? 'Examples:' : 'Example:');
  for (const e of d.examples) parts.push(`  ${e}`);
  if (d.notes) parts.push('', d.notes);
  return `\n${parts.join('\n')}`;
}

/** Register a descriptor's command on the program. */
export function registerCommand(program: Command, d: AnyCommand): Command {
  const cmd = program.command(d.name).description(d.summary);
  for (const a of d.args ?? []) cmd.argument(a.variadic ? `<${a.name}...>` : `<${a.name}>`, a.help);
  const options = commandOptions(d);
  for (const info of options) cmd.addOption(commanderOption(info));
  cmd.option('--json', 'print the JSON report on stdout');
  cmd.option('--quiet', 'no progress output');
  cmd.addHelpText('after', helpAfter(d));
  cmd.action(async (...params: unknown[]) => {
    const c = params[params.length - 1] as Command;
    const args = params.slice(0, d.args?.length ?? 0).flatMap((a) => (Array.isArray(a) ? a.map(String) : [String(a)]));
    const given = c.opts();
    // only what the user typed: the schema supplies every default (commander's implicit `--no-x` true is not one)
    const raw: Record<string, unknown> = {};
    for (const info of options) {
      const src = c.getOptionValueSource(info.key);
      if (src !== undefined && src !== 'default' && given[info.key] !== undefined) raw[info.key] = given[info.key];
    }
    const json = !!given.json;
    const quiet = !!given.quiet;
    const progress = createProgress({ quiet, json });
    // the report is written into the staged output and only a complete output is published (src/io/output.ts)
    // and a staging directory of another run (other inputs or options) is discarded, not resumed
    const identity = await runFingerprint(d.name, raw, [...(typeof raw.model === 'string' ? [raw.model] : []), ...inputPaths(options, raw), ...args]);
    const report = await deferPublish(() => withRunIdentity(identity, () => d.run({ ...raw, progress }, { args, progress })));
    if (json) process.stdout.write(JSON.stringify(d.json ? d.json(report) : report, null, 2) + '\n');
    else {
      const text = d.print?.(report, { ...raw, json, quiet });
      if (text) process.stdout.write(text + '\n');
    }
  });
  return cmd;
}
