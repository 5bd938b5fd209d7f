/**
 * Golden interaction traces of the Raft core (in the style of etcd-io/raft's datadriven tests):
 * each file in test/raft/golden/ is a script of steps (lines starting with "> ") followed by what
 * every Ready contained: soft and hard state, entries to persist, committed entries, the messages
 * that may leave at once and those that must wait until the Ready is durable. Any change in what
 * the core hands out, or in what order, shows up as a diff of these files in review.
 *
 *   REWRITE=1 npx mocha dist/test/raft/golden.test.js     regenerate after an intended change
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Entry, EntryType, Ready } from '../../src/raft';
import { fmtMsg } from '../sim/kit';
import { Network, text } from './network';

/** The golden files live in the sources (this file runs from dist/test/raft/). */
const DIR = path.resolve(__dirname, '../../../test/raft/golden');

function fmtEntry(e: Entry): string {
  const kind = e.type === EntryType.ConfChange ? 'conf' : 'normal';
  const data = new TextDecoder().decode(e.data);
  return `${e.index}/${e.term} ${kind}${data ? ` "${data}"` : ''}`;
}

function fmtReady(id: string, rd: Ready): string[] {
  const out = [`${id} ready:`];
  if (rd.softState) out.push(`  soft: ${rd.softState.role} leader=${rd.softState.leader || '-'}`);
  if (rd.hardState)
    out.push(
      `  hard: term=${rd.hardState.term} vote=${rd.hardState.vote || '-'} commit=${rd.hardState.commit}`,
    );
  if (rd.snapshot) out.push(`  snapshot: ${rd.snapshot.index}/${rd.snapshot.term}`);
  if (rd.entries.length) out.push(`  entries: ${rd.entries.map(fmtEntry).join(', ')}`);
  if (rd.committedEntries.length)
    out.push(`  committed: ${rd.committedEntries.map(fmtEntry).join(', ')}`);
  for (const m of rd.messages) out.push(`  send: ${fmtMsg(m)}`);
  for (const m of rd.messagesAfterAppend) out.push(`  send after append: ${fmtMsg(m)}`);
  for (const r of rd.readStates)
    out.push(`  read state: index=${r.index} ctx=${new TextDecoder().decode(r.context)}`);
  if (rd.mustSync) out.push('  must sync');
  return out;
}

/** Run a script; returns the file's full text (script lines and their traces). */
function run(script: string[]): string {
  let net: Network | undefined;
  const out: string[] = [];
  const need = (): Network => {
    if (!net) throw new Error('the script must start with "cluster"');
    return net;
  };
  for (const line of script) {
    out.push(`> ${line}`);
    const [cmd, ...args] = line.split(' ');
    const before = out.length;
    switch (cmd) {
      case 'cluster':
        net = new Network(args);
        net.onReady = (id, rd) => out.push(...fmtReady(id, rd));
        net.stabilize();
        break;
      case 'campaign':
        need().campaign(args[0]);
        break;
      case 'propose':
        need().propose(args[0], args[1]);
        break;
      case 'tick':
        need().tick(Number(args[0]), args.slice(1).length ? args.slice(1) : undefined);
        break;
      case 'isolate':
        need().isolate(args[0]);
        break;
      case 'heal':
        need().heal();
        break;
      case 'read':
        need().node(args[0]).raw.readIndex(text(args[1]));
        need().stabilize();
        break;
      case 'transfer':
        need().node(args[0]).raw.transferLeadership(args[1]);
        need().stabilize();
        break;
      default:
        throw new Error(`unknown step ${cmd}`);
    }
    if (out.length === before) out.push('(nothing)');
  }
  return out.join('\n') + '\n';
}

describe('golden interaction traces (test/raft/golden)', () => {
  for (const file of fs.readdirSync(DIR).filter((f) => f.endsWith('.txt'))) {
    it(file.replace(/\.txt$/, ''), () => {
      const p = path.join(DIR, file);
      const want = fs.readFileSync(p, 'utf8');
      const script = want
        .split('\n')
        .filter((l) => l.startsWith('> '))
        .map((l) => l.slice(2));
      const got = run(script);
      if (process.env.REWRITE === '1') fs.writeFileSync(p, got);
      else assert.equal(got, want, `${file} changed: check the diff, then REWRITE=1 if intended`);
    });
  }
});
