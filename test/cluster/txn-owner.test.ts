/**
 * Two-phase commit transaction ids belong to their owner (the caller's security key), on a real
 * three-node cluster with keys: two keys may use the same id; a vote is finished or aborted
 * only under the key that made it; a second Vote under an id with another content is refused,
 * never mistaken for a retry; all of it through forwarding followers and across a leader kill.
 * Commit sessions (exactly-once commits) are scoped to the key likewise.
 */
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { addKey } from '../../src/cli/keys';
import { NotFoundError } from '../../src/client/errors';
import type { StorageRpc } from '../../src/client/rpc';
import { p64 } from '../../src/util/ids';
import { TestCluster } from '../harness/cluster';
import { rmDir, tmpDir } from '../harness/index';
import { rejectsWith, rpcWithKey } from '../security/helpers';

const LIVENESS_MS = 10_000;
const oid = (n: number): Buffer => p64(BigInt(n));
const store = (o: number, d: string): object => ({
  stores: [{ oid: oid(o), data: Buffer.from(d) }],
});

describe('cluster: transaction ids are bound to their owner', function () {
  this.timeout(120_000);
  let cluster: TestCluster;
  let dir: string;
  const rpcs: StorageRpc[] = [];

  afterEach(async () => {
    for (const r of rpcs) r.close();
    rpcs.length = 0;
    await cluster?.stop();
    rmDir(dir);
  });

  it('scopes ids to the key, refuses a different content under a voted id, and lets only the owner settle a vote, also after a leader kill', async () => {
    dir = tmpDir('txn-owner');
    const keysFile = path.join(dir, 'keys.json');
    const aliceKey = addKey(keysFile, 'read-write', ['*']);
    const bobKey = addKey(keysFile, 'read-write', ['*']);
    cluster = await TestCluster.start(3, { ZEORAFT_KEYS_FILE: keysFile });
    const leader = await cluster.leader();
    const [f1, f2] = cluster.alive().filter((id) => id !== leader);
    const as = (key: string, id: string): StorageRpc => {
      const r = rpcWithKey(`127.0.0.1:${cluster.member(id).client}`, key);
      rpcs.push(r);
      return r;
    };
    const alice = as(aliceKey, f1);
    const alice2 = as(aliceKey, f2);
    const bob = as(bobKey, f2);

    // The sequence, through a follower: the second Vote is refused, not taken as a retry.
    await alice.call('Vote', { transactionId: '1', transaction: store(0x111, 'a1') });
    await rejectsWith(
      alice.call('Vote', { transactionId: '1', transaction: store(0x112, 'a2') }),
      grpc.status.ALREADY_EXISTS,
      /already voted with a different content/,
    );
    // An identical Vote is a retry, also through another node.
    await alice2.call('Vote', { transactionId: '1', transaction: store(0x111, 'a1') });

    // Another key's id "1" is another transaction.
    await bob.call('Vote', { transactionId: '1', transaction: store(0x221, 'b1') });

    // Bob can neither finish nor abort Alice's vote "2".
    await alice.call('Vote', { transactionId: '2', transaction: store(0x333, 'a3') });
    await rejectsWith(
      bob.call('Finish', { transactionId: '2' }),
      grpc.status.FAILED_PRECONDITION,
      /not voted/,
    );
    await bob.call('Abort', { transactionId: '2' }); // aborts nothing of Alice's

    // Leader killed: the votes and their owners are replicated state.
    await cluster.kill(leader);
    await cluster.leader([f1, f2], LIVENESS_MS);
    const tidA1 = (await alice2.call('Finish', { transactionId: '1' })).tid;
    const tidB1 = (await bob.call('Finish', { transactionId: '1' })).tid;
    const tidA3 = (await alice.call('Finish', { transactionId: '2' })).tid;
    // A retried Finish answers the same TID.
    assert.deepEqual((await alice.call('Finish', { transactionId: '1' })).tid, tidA1);

    const load = (o: number) => alice2.call('Load', { oid: oid(o), seenTid: tidA3 });
    assert.deepEqual(
      [(await load(0x111)).data.toString(), (await load(0x111)).serial],
      ['a1', tidA1],
    );
    assert.deepEqual(
      [(await load(0x221)).data.toString(), (await load(0x221)).serial],
      ['b1', tidB1],
    );
    assert.equal((await load(0x333)).data.toString(), 'a3');
    await assert.rejects(load(0x112), NotFoundError);

    // Commit sessions are scoped the same way: Bob's session "s" is not Alice's, so his commit 1
    // there is his own commit, never answered with hers; hers still answers her retry.
    const inSession = (o: number, d: string) => ({
      transaction: store(o, d),
      sessionId: 's',
      sequence: 1,
    });
    const tidS = (await alice.call('Commit', inSession(0x444, 'as'))).tid;
    const tidBobS = (await bob.call('Commit', inSession(0x555, 'bs'))).tid;
    assert.notDeepEqual(tidBobS, tidS);
    assert.deepEqual((await alice2.call('Commit', inSession(0x444, 'as'))).tid, tidS);
    assert.equal(
      (await bob.call('Load', { oid: oid(0x555), seenTid: tidBobS })).data.toString(),
      'bs',
    );
  });
});
