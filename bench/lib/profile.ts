/** Summaries of V8 .cpuprofile files (written by `node --cpu-prof`): the hottest functions by self time. */
import * as fs from 'node:fs';
import * as path from 'node:path';

const TOP_FUNCTIONS = 15;

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** Self time per function of every profile in `dir`, as text, busiest process first. */
export function summarizeProfiles(dir: string): string {
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  if (files.length === 0) return `no CPU profiles were written to ${dir}`;
  const parts: { busyUs: number; text: string }[] = [];
  for (const f of files) {
    const p = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as CpuProfile;
    const byNode = new Map(p.nodes.map((n) => [n.id, n]));
    const selfUs = new Map<string, number>();
    let total = 0;
    let idle = 0;
    p.samples.forEach((id, i) => {
      const dt = p.timeDeltas[i] ?? 0;
      total += dt;
      const cf = byNode.get(id)?.callFrame;
      if (!cf) return;
      if (cf.functionName === '(idle)') idle += dt;
      const where = cf.url
        ? `${cf.url.replace(/^.*\/(node_modules|dist)\//, '$1/')}:${cf.lineNumber + 1}`
        : '';
      const k = `${cf.functionName || '(anonymous)'} ${where}`.trim();
      selfUs.set(k, (selfUs.get(k) ?? 0) + dt);
    });
    const busy = total - idle;
    const top = [...selfUs.entries()]
      .filter(([k]) => !k.startsWith('(idle)'))
      .sort((a, b) => b[1] - a[1])
      .slice(0, TOP_FUNCTIONS)
      .map(([k, us]) => `  ${((100 * us) / Math.max(1, busy)).toFixed(1).padStart(5)}%  ${k}`);
    parts.push({
      busyUs: busy,
      text: `${f}: busy ${(busy / 1e6).toFixed(1)} s of ${(total / 1e6).toFixed(1)} s (self time, % of busy)\n${top.join('\n')}`,
    });
  }
  return parts
    .sort((a, b) => b.busyUs - a.busyUs)
    .map((x) => x.text)
    .join('\n\n');
}
