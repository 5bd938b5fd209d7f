/** `zeoraft server`: run one node until SIGTERM/SIGINT, then stop cleanly (a leader hands off first). */
import type { NodeConfig } from '../server/config';
import { StorageNode } from '../server/node';

export async function runServer(config: NodeConfig): Promise<void> {
  const node = await StorageNode.start(config);
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    node.log.info({ signal }, 'stopping');
    node.stop().then(
      () => process.exit(0),
      (e: unknown) => {
        node.log.error({ error: String(e) }, 'stop failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // Ready line for launchers and tests: the bound client port.
  process.stdout.write(
    `${JSON.stringify({ msg: 'zeoraft node ready', node: config.nodeId, port: node.port })}\n`,
  );
}
