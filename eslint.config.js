// ESLint flat config. The Raft core (src/raft) must stay pure: no I/O, no clock, no randomness.
const js = require('@eslint/js');
const tseslint = require('typescript-eslint');

module.exports = tseslint.config(
  { ignores: ['dist/', 'src/generated/', 'node_modules/', 'data/', 'examples/', 'eslint.config.js'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      '@typescript-eslint/no-explicit-any': 'off',
      'no-constant-condition': ['error', { checkLoops: false }],
    },
  },
  {
    files: ['src/raft/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['node:*', 'fs', 'net', 'http', 'child_process', 'os', 'crypto', 'timers'], message: 'src/raft is a pure core: no I/O.' },
            { group: ['@grpc/*', 'level', 'prom-client', '../server/*', '../storage/*', '../client/*', '../metrics/*', '../cli/*'], message: 'src/raft may depend only on src/util.' },
          ],
        },
      ],
      'no-restricted-globals': [
        'error',
        { name: 'setTimeout', message: 'time comes from tick()' },
        { name: 'setInterval', message: 'time comes from tick()' },
        { name: 'setImmediate', message: 'time comes from tick()' },
        { name: 'process', message: 'no process access in the core' },
      ],
      'no-restricted-properties': [
        'error',
        { object: 'Date', property: 'now', message: 'time comes from tick()' },
        { object: 'Math', property: 'random', message: 'randomness comes from the injected PRNG' },
        { object: 'performance', property: 'now', message: 'time comes from tick()' },
      ],
      'no-restricted-syntax': ['error', { selector: "NewExpression[callee.name='Date']", message: 'time comes from tick()' }],
    },
  },
  {
    // The Raft host runs in production and in the deterministic simulator: its clock, timers,
    // disk, network and fatal exit come in through HostDeps.
    files: ['src/server/raft-host*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['node:*', 'fs', 'net', 'http', 'child_process', 'os', 'crypto', 'timers', 'perf_hooks'], message: 'the Raft host gets its I/O through HostDeps.' },
            { group: ['@grpc/*', 'level', 'prom-client', './errors', './node', './peer-transport', './raft-log', '../metrics/*'], message: 'the Raft host gets its I/O through HostDeps; gRPC statuses belong to raft-replicator.ts.' },
          ],
        },
      ],
      'no-restricted-globals': [
        'error',
        { name: 'setTimeout', message: 'timers come from HostClock.after' },
        { name: 'setInterval', message: 'ticks come from the adapter' },
        { name: 'setImmediate', message: 'use HostClock.soon' },
        { name: 'process', message: 'use HostDeps.onFatal' },
      ],
      'no-restricted-properties': [
        'error',
        { object: 'Date', property: 'now', message: 'time comes from HostClock.nowMs' },
        { object: 'Math', property: 'random', message: 'randomness comes from the host seed' },
        { object: 'performance', property: 'now', message: 'time comes from HostClock.nowMs' },
      ],
      'no-restricted-syntax': ['error', { selector: "NewExpression[callee.name='Date']", message: 'time comes from HostClock.nowMs' }],
    },
  },
  {
    files: ['src/client/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [{ group: ['../server/*', '../raft/*', '../storage/*'], message: 'the client depends on proto types and util only' }] }],
    },
  },
  {
    files: ['src/storage/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [{ group: ['../server/*', '../client/*', '../cli/*', '@grpc/*'], message: 'storage must not depend on server, client or gRPC' }] }],
    },
  },
);
