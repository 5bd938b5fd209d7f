/** Admin commands against a running node. */
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { storagePackage } from '../proto';
import { hex, tidToIso } from '../util/ids';

export async function runAdminCommand(command: string, args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { address: { type: 'string' } },
    allowPositionals: true,
  });
  const address = values.address ?? process.env.ZEORAFT_ADDRESS ?? '127.0.0.1:7101';
  if (command !== 'status') {
    process.stderr.write(`${command}: not supported by a standalone node\n`);
    return 2;
  }
  const Storage = storagePackage().zeoraft.v1.Storage;
  const client = new Storage(address, grpc.credentials.createInsecure());
  const status = await new Promise<any>((resolve, reject) =>
    client.Status({}, { deadline: Date.now() + 5000 }, (err, res) =>
      err ? reject(err) : resolve(res),
    ),
  );
  client.close();
  process.stdout.write(
    `${status.nodeId}\trole=${status.role}\tleader=${status.leaderId}\tterm=${status.term}\tcommit=${status.commitIndex}\tapplied=${status.appliedIndex}\tlast_tid=${hex(status.lastTid)} (${tidToIso(status.lastTid)})\n`,
  );
  return 0;
}
