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
