/* global module */
/**
 * The dependency gate (`npm run lint`): the module graph of src/, type-only imports included,
 * checked by dependency-cruiser. Rules: no import cycle; the Raft core depends on src/util only;
 * the ZEO door and the gRPC storage service do not depend on the node (src/server/node.ts, the
 * composition root). Any violation fails the lint; there is no list of tolerated ones.
 */
module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'An import cycle, type-only imports included: modules that cannot be read, tested or built one at a time.',
      from: {},
      to: { circular: true },
    },
    {
      name: 'raft-core-is-pure',
      severity: 'error',
      comment: 'src/raft is the pure Raft core: it may import only src/raft and src/util.',
      from: { path: '^src/raft/' },
      to: { pathNot: ['^src/raft/', '^src/util/'] },
    },
    {
      name: 'adapters-not-on-node',
      severity: 'error',
      comment:
        'The ZEO door and the gRPC storage service use the storage API and narrow interfaces, not the node (the composition root).',
      from: { path: ['^src/zeo/', '^src/server/storage-service\\.ts$'] },
      to: { path: '^src/server/node\\.ts$' },
    },
  ],
  options: {
    // Type-only imports count: a cycle of `import type` is still a cycle between modules.
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    doNotFollow: { path: ['node_modules'] },
    exclude: { path: ['^src/generated/'] },
    enhancedResolveOptions: { extensions: ['.ts', '.js', '.json'] },
  },
};
