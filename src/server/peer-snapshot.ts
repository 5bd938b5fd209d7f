/**
 * Snapshots between peers: a leader streams its state to a follower in chunks (a gRPC
 * client-streaming call on the peer port, on a connection of its own so a large snapshot never
 * delays heartbeats); a follower writes the chunks to a file, validates them and hands them to
 * the replicator to install.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { RaftClient } from '../generated/zeoraft/v1/raft/Raft';
import type { SnapshotPart, SnapshotPart__Output } from '../generated/zeoraft/v1/raft/SnapshotPart';
import type { SnapshotAck } from '../generated/zeoraft/v1/raft/SnapshotAck';
import type { NodeMetrics } from '../metrics/metrics';
import { Message, MessageType } from '../raft';
import { type ObjectStore, validateSnapshot } from '../storage/object-store';
import type { Logger } from '../util/log';
import type { NodeConfig } from './config';
import { RpcError, toServiceError } from './errors';
import { fromProto, toProto } from './peer-messages';
import type { RaftReplicator } from './raft-replicator';

const SNAPSHOT_FILE = 'snapshot-incoming.tmp';

/** What snapshot transfers use of the peer transport. */
export interface SnapshotTransport {
  readonly node: {
    config: Pick<NodeConfig, 'dataDir'>;
    log: Logger;
    metrics: Pick<
      NodeMetrics,
      'peerSentFailures' | 'snapshotsSent' | 'snapshotBytesSent' | 'snapshotSendDuration'
    >;
    store: Pick<ObjectStore, 'restore' | 'appliedIndex'>;
  };
  readonly replicator: Pick<
    RaftReplicator,
    'captureSnapshot' | 'reportSnapshot' | 'installSnapshot' | 'fatal'
  >;
  /** Names and authenticates this node on a call to a peer. */
  callMetadata(): grpc.Metadata;
}

/** The link to the follower a snapshot goes to. */
export interface SnapshotLink {
  /** At most one snapshot in flight per follower. */
  snapshotInFlight: boolean;
  connection(): RaftClient | undefined;
}

/** Send a snapshot to `m.to` (m: the core's Snapshot message), then report the outcome to the core. */
export async function sendSnapshot(
  t: SnapshotTransport,
  link: SnapshotLink,
  m: Message,
): Promise<void> {
  if (link.snapshotInFlight) return;
  link.snapshotInFlight = true;
  const started = Date.now();
  let ok = false;
  try {
    const client = link.connection();
    const cap = await t.replicator.captureSnapshot();
    if (!client || !cap) return;
    const msg: Message = { ...m, snapshot: cap.meta };
    t.node.log.info({ to: m.to, index: cap.meta.index }, 'sending snapshot');
    let bytes = 0;
    const ack = await new Promise<{ installed: boolean }>((resolve, reject) => {
      const call = client.Snapshot(
        t.callMetadata(),
        { deadline: Date.now() + 10 * 60_000 },
        (err, res) => (err ? reject(err) : resolve(res as { installed: boolean })),
      );
      (async () => {
        const write = async (part: SnapshotPart): Promise<void> => {
          if (!call.write(part)) await new Promise((r) => call.once('drain', r));
        };
        await write({ message: toProto(msg) });
        for await (const chunk of cap.chunks) {
          bytes += chunk.length;
          await write({ chunk });
        }
        call.end();
      })().catch((e: unknown) => {
        call.cancel();
        reject(e);
      });
    });
    ok = ack.installed;
    t.node.metrics.snapshotsSent.inc();
    t.node.metrics.snapshotBytesSent.inc(bytes);
    t.node.metrics.snapshotSendDuration.observe((Date.now() - started) / 1000);
    t.node.log.info(
      { to: m.to, index: cap.meta.index, bytes, installed: ok, ms: Date.now() - started },
      'snapshot sent',
    );
  } catch (e) {
    t.node.log.warn({ to: m.to, error: String(e) }, 'snapshot transfer failed');
    t.node.metrics.peerSentFailures.inc({ peer: m.to });
  } finally {
    link.snapshotInFlight = false;
    t.replicator.reportSnapshot(m.to, ok);
  }
}

/** The Snapshot call's handler on the receiving follower. */
export function receiveSnapshot(
  t: SnapshotTransport,
): grpc.handleClientStreamingCall<SnapshotPart__Output, SnapshotAck> {
  return (call, callback) => {
    const file = path.join(t.node.config.dataDir, SNAPSHOT_FILE);
    let header: Message | undefined;
    const out = fs.createWriteStream(file);
    // A full or failing disk while receiving: stop in order (the partial file is discarded).
    out.on('error', (e) => t.replicator.fatal(e));
    call.on('data', (part: SnapshotPart__Output) => {
      if (!header && part.message) {
        header = fromProto(part.message);
        return;
      }
      const len = Buffer.alloc(4);
      len.writeUInt32BE(part.chunk.length);
      out.write(len);
      if (!out.write(part.chunk)) {
        call.pause();
        out.once('drain', () => call.resume());
      }
    });
    call.on('error', () => out.destroy());
    call.on('end', () => {
      out.end(async () => {
        try {
          if (!header || header.type !== MessageType.Snapshot || !header.snapshot)
            throw new RpcError(
              grpc.status.INVALID_ARGUMENT,
              'snapshot stream without a Snapshot message',
            );
          const index = header.snapshot.index;
          // Refuse a malformed snapshot before the core sees its message: once the core has
          // accepted a snapshot, failing to install its data stops the node.
          await validateSnapshot(readChunks(file), index);
          const installed = await t.replicator.installSnapshot(header, () =>
            t.node.store.restore(() => readChunks(file), index),
          );
          callback(null, { installed, appliedIndex: t.node.store.appliedIndex });
        } catch (e) {
          t.node.log.error({ error: String(e) }, 'snapshot install failed');
          callback(toServiceError(e) as grpc.ServiceError);
        } finally {
          fs.rmSync(file, { force: true });
        }
      });
    });
  };
}

/** The length-prefixed chunks of a received snapshot file. */
async function* readChunks(file: string): AsyncGenerator<Buffer> {
  const fd = await fs.promises.open(file, 'r');
  try {
    const len = Buffer.alloc(4);
    for (;;) {
      const r = await fd.read(len, 0, 4, null);
      if (r.bytesRead === 0) return;
      if (r.bytesRead !== 4) throw new Error('truncated snapshot file');
      const n = len.readUInt32BE(0);
      const chunk = Buffer.alloc(n);
      const c = await fd.read(chunk, 0, n, null);
      if (c.bytesRead !== n) throw new Error('truncated snapshot chunk');
      yield chunk;
    }
  } finally {
    await fd.close();
  }
}
