/** Starting a node as a Raft cluster member. */
import type { NodeConfig } from './config';
import type { StorageNode } from './node';

export async function startClusterNode(config: NodeConfig): Promise<StorageNode> {
  throw new Error(
    `node ${config.nodeId}: cluster membership (--peers/--join) is not available in this build`,
  );
}
