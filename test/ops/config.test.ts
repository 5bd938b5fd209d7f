/**
 * The deployment files in cluster/ and docker-compose.yml are valid for the tools that read them,
 * the alert rules behave as their unit tests say, every dashboard query parses, and the compose
 * file configures its nodes exactly like the local launcher does.
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { clusterEnv } from '../../src/cli/cluster';
import { rmDir, tmpDir } from '../harness';
import { hasCommand } from './local-cluster';

const ROOT = path.resolve(__dirname, '../../..');
const CLUSTER = path.join(ROOT, 'cluster');
const DASHBOARD = path.join(CLUSTER, 'grafana/dashboards/zeoraft.json');

function run(cmd: string, args: string[], cwd = ROOT): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8' });
  assert.equal(
    r.status,
    0,
    `${cmd} ${args.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`,
  );
  return r.stdout;
}

describe('cluster/: Prometheus configuration and alert rules', function () {
  this.timeout(60_000);
  before(function () {
    if (!hasCommand('promtool')) {
      console.warn('    skipped: promtool is not installed (apt-get install prometheus; CI does)');
      this.skip();
    }
  });

  it('the scrape configs are valid (local launcher and compose variants)', () => {
    run('promtool', ['check', 'config', 'prometheus.yml'], CLUSTER);
    run('promtool', ['check', 'config', 'prometheus-compose.yml'], CLUSTER);
  });

  it('the alert rules are valid', () => {
    const out = run('promtool', ['check', 'rules', 'alerts.yml'], CLUSTER);
    assert.match(out, /SUCCESS: \d+ rules found/);
  });

  it('the alert rules pass their unit tests (no leader, lost quorum, leader churn, slow fsync)', () => {
    const out = run('promtool', ['test', 'rules', 'alerts.test.yml'], CLUSTER);
    assert.match(out, /SUCCESS/);
  });

  it('every dashboard query is valid PromQL', () => {
    const dash = JSON.parse(fs.readFileSync(DASHBOARD, 'utf8')) as {
      panels: { targets?: { expr: string }[] }[];
      annotations: { list: { expr?: string }[] };
    };
    const exprs = [
      ...dash.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)),
      ...dash.annotations.list.flatMap((a) => (a.expr ? [a.expr] : [])),
    ];
    assert.ok(exprs.length > 20, `only ${exprs.length} queries`);
    // promtool parses recording rules without a server: one rule per query, Grafana's
    // interval variables replaced by fixed durations.
    const rules = exprs
      .map(
        (e, i) =>
          `      - record: dashboard_query_${i}\n        expr: ${JSON.stringify(e.replace(/\$__rate_interval/g, '1m').replace(/\$__range/g, '1h'))}`,
      )
      .join('\n');
    const dir = tmpDir('dashboard-rules');
    try {
      const file = path.join(dir, 'rules.yml');
      fs.writeFileSync(file, `groups:\n  - name: dashboard\n    rules:\n${rules}\n`);
      run('promtool', ['check', 'rules', file]);
    } finally {
      rmDir(dir);
    }
  });
});

describe('cluster/grafana: the dashboard covers failover monitoring', () => {
  it('has the panels operators look at during a failover', () => {
    const dash = JSON.parse(fs.readFileSync(DASHBOARD, 'utf8')) as {
      uid: string;
      panels: { title: string; targets?: { expr: string }[] }[];
    };
    const all = JSON.stringify(dash.panels);
    for (const metric of [
      'zeoraft_raft_is_leader',
      'zeoraft_raft_term',
      'zeoraft_raft_leader_changes_seen_total',
      'zeoraft_raft_commit_index',
      'zeoraft_raft_applied_index',
      'zeoraft_raft_proposals_committed_total',
      'zeoraft_raft_proposals_failed_total',
      'zeoraft_transaction_commit_duration_seconds_bucket',
      'zeoraft_disk_log_fsync_duration_seconds_bucket',
      'zeoraft_peer_round_trip_time_seconds_bucket',
      'zeoraft_subscribers',
      'zeoraft_invalidations_sent_total',
      'zeoraft_transaction_conflicts_total',
      'zeoraft_grpc_requests_total',
    ])
      assert.ok(all.includes(metric), `no panel queries ${metric}`);
    assert.ok(dash.panels.some((p) => p.title === 'Which node leads'));
    // The provisioning files point at the dashboard and the compose Prometheus.
    const provider = fs.readFileSync(
      path.join(CLUSTER, 'grafana/provisioning/dashboards/zeoraft.yml'),
      'utf8',
    );
    assert.match(provider, /path: \/var\/lib\/grafana\/dashboards\/zeoraft/);
    const ds = fs.readFileSync(
      path.join(CLUSTER, 'grafana/provisioning/datasources/prometheus.yml'),
      'utf8',
    );
    assert.match(ds, /url: http:\/\/prometheus:9090/);
  });
});

describe('docker-compose.yml', function () {
  this.timeout(60_000);
  before(function () {
    if (!hasCommand('docker-compose', ['version'])) {
      console.warn(
        '    skipped: docker-compose is not installed (apt-get install docker-compose; CI does)',
      );
      this.skip();
    }
  });

  it('is a valid compose file', () => {
    run('docker-compose', ['config', '-q']);
  });

  it('configures each node with the same ZEORAFT_* settings as the local launcher', () => {
    // docker-compose resolves anchors and merges; its Python YAML module turns the result into JSON.
    const yaml = run('docker-compose', ['config']);
    const json = spawnSync(
      '/usr/bin/python3',
      ['-c', 'import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))'],
      { input: yaml, encoding: 'utf8' },
    );
    assert.equal(json.status, 0, json.stderr);
    const compose = JSON.parse(json.stdout) as {
      services: Record<string, { environment: Record<string, string>; healthcheck?: object }>;
    };
    const opts = { nodes: 3, dataDir: './data', logLevel: 'info', basePort: 7100 };
    for (let i = 1; i <= 3; i++) {
      const svc = compose.services[`zeoraft${i}`];
      assert.ok(svc, `service zeoraft${i}`);
      assert.ok(svc.healthcheck, `zeoraft${i} has a healthcheck`);
      const local = clusterEnv(opts, i);
      const env = svc.environment;
      assert.deepEqual(
        Object.keys(env).sort(),
        Object.keys(local).sort(),
        `zeoraft${i} sets the launcher's variables`,
      );
      // Same ids and ports; the compose nodes listen on all interfaces and name each other by service.
      const norm = (s: string) =>
        s.replace(/zeoraft(\d)(?=:)/g, '127.0.0.1').replace(/^0\.0\.0\.0:/, '127.0.0.1:');
      for (const k of [
        'ZEORAFT_NODE_ID',
        'ZEORAFT_LISTEN',
        'ZEORAFT_PEER_LISTEN',
        'ZEORAFT_HTTP_LISTEN',
        'ZEORAFT_ZEO_LISTEN',
        'ZEORAFT_PEERS',
      ])
        if (k in local) assert.equal(norm(env[k]), local[k], `zeoraft${i} ${k}`);
    }
  });
});
