/**
 * Admin commands against a running cluster: any node's client address is enough; calls that
 * must reach the leader follow its hint.
 */
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { decodeStatusDetails, storagePackage } from '../proto';
import { adminPackage } from '../server/admin-service';
import { hex, tidToIso } from '../util/ids';

const TIMEOUT_MS = 30_000;

/** How the CLI reaches a secured cluster: --ca (TLS), --cert/--cert-key (client certificate), --key. */
let credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure();
const metadata = new grpc.Metadata();

function call<T>(client: any, method: string, req: object, timeoutMs = TIMEOUT_MS): Promise<T> {
  return new Promise((resolve, reject) =>
    client[method](
      req,
      metadata,
      { deadline: Date.now() + timeoutMs },
      (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res)),
    ),
  );
}

function adminClient(address: string): any {
  return new (adminPackage().zeoraft.v1.Admin)(address, credentials);
}

/** Call an Admin method on `address`, following a leader hint once. */
async function adminCall<T>(address: string, method: string, req: object): Promise<T> {
  let target = address;
  for (let attempt = 0; attempt < 3; attempt++) {
    const c = adminClient(target);
    try {
      return await call<T>(c, method, req);
    } catch (e) {
      const hint = decodeStatusDetails((e as grpc.ServiceError).metadata)?.leaderHint;
      if ((e as grpc.ServiceError).code !== grpc.status.UNAVAILABLE || !hint || hint === target)
        throw e;
      target = hint;
    } finally {
      c.close();
    }
  }
  throw new Error(`${method}: could not reach the leader`);
}

async function status(address: string): Promise<number> {
  const Storage = storagePackage().zeoraft.v1.Storage;
  const one = new Storage(address, credentials);
  const self = await call<any>(one, 'Status', {}, 5000);
  one.close();
  let members: { id: string; role: string; clientAddress: string }[] = [];
  try {
    members = (await call<any>(adminClient(address), 'Members', {}, 5000)).members;
  } catch {
    members = [{ id: self.nodeId, role: self.role, clientAddress: address }]; // a standalone node
  }
  const rows = await Promise.all(
    members.map(async (m) => {
      const c = new Storage(m.clientAddress || address, credentials);
      try {
        const s = await call<any>(c, 'Status', {}, 3000);
        return [
          m.id,
          s.role,
          s.leaderId || '-',
          String(s.term),
          String(s.commitIndex),
          String(s.appliedIndex),
          `${hex(s.lastTid)} ${tidToIso(s.lastTid)}`,
          'yes',
        ];
      } catch (e) {
        return [
          m.id,
          m.role,
          '-',
          '-',
          '-',
          '-',
          '-',
          `no (${(e as grpc.ServiceError).code === grpc.status.UNAVAILABLE ? 'unreachable' : String(e)})`,
        ];
      } finally {
        c.close();
      }
    }),
  );
  const header = ['MEMBER', 'ROLE', 'LEADER', 'TERM', 'COMMIT', 'APPLIED', 'LAST TID', 'REACHABLE'];
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => r[i].length)));
  for (const r of all) process.stdout.write(`${r.map((c, i) => c.padEnd(widths[i])).join('  ')}\n`);
  return 0;
}

export async function runAdminCommand(command: string, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      address: { type: 'string' },
      key: { type: 'string' },
      ca: { type: 'string' },
      cert: { type: 'string' },
      'cert-key': { type: 'string' },
    },
    allowPositionals: true,
  });
  const address = values.address ?? process.env.ZEORAFT_ADDRESS ?? '127.0.0.1:7101';
  const key = values.key ?? process.env.ZEORAFT_KEY;
  if (key) metadata.set('x-zeoraft-key', key);
  const ca = values.ca ?? process.env.ZEORAFT_TLS_CA;
  if (ca) {
    const read = (f: string | undefined): Buffer | null => (f ? fs.readFileSync(f) : null);
    credentials = grpc.credentials.createSsl(read(ca), read(values['cert-key']), read(values.cert));
  }
  const need = (n: number, usage: string): void => {
    if (positionals.length < n) throw new Error(`usage: zeoraft ${usage}`);
  };
  switch (command) {
    case 'status':
      return status(address);
    case 'member': {
      const [sub, id, peerAddress, clientAddress] = positionals;
      if (sub === 'add') {
        need(4, 'member add ID PEER_HOST:PORT CLIENT_HOST:PORT');
        const r = await adminCall<any>(address, 'AddMember', { id, peerAddress, clientAddress });
        process.stdout.write(
          `added ${id} as a learner at index ${r.index}; promote it once it has caught up\n`,
        );
      } else if (sub === 'promote' || sub === 'remove') {
        need(2, `member ${sub} ID`);
        const r = await adminCall<any>(
          address,
          sub === 'promote' ? 'PromoteMember' : 'RemoveMember',
          { id },
        );
        process.stdout.write(
          `${sub === 'promote' ? 'promoted' : 'removed'} ${id} at index ${r.index}\n`,
        );
      } else if (sub === 'list' || sub === undefined) {
        const r = await adminCall<any>(address, 'Members', {});
        for (const m of r.members)
          process.stdout.write(
            `${m.id}\t${m.role}\tpeer=${m.peerAddress}\tclient=${m.clientAddress}\tmatch=${m.matchIndex}\n`,
          );
      } else {
        throw new Error('usage: zeoraft member add|promote|remove|list ...');
      }
      return 0;
    }
    case 'transfer-leader': {
      need(1, 'transfer-leader ID');
      const r = await adminCall<any>(address, 'TransferLeader', { id: positionals[0] });
      process.stdout.write(`leader is now ${r.leaderId}\n`);
      return 0;
    }
    case 'snapshot': {
      const c = adminClient(address);
      const r = await call<any>(c, 'Snapshot', {});
      c.close();
      process.stdout.write(
        `log compacted: snapshot at index ${r.snapshotIndex}, first retained entry ${r.firstIndex}\n`,
      );
      return 0;
    }
    default:
      throw new Error(`unknown admin command ${command}`);
  }
}
