/**
 * Fuzzing the Storage API of a live three-node cluster with fast-check: random requests built
 * from the .proto types, mutated encodings of them, and random bytes, sent raw (a grpc-js
 * generic client with identity serializers) to random nodes while a writer commits. Every answer
 * must be a proper gRPC status, no node may exit, and every transaction acknowledged before and
 * during the run must read back intact from every node afterwards.
 *
 * Pack is left out of the fuzzed methods (a random pack with gc could legitimately collect the
 * writer's unreferenced objects); its bad input is covered in bad-input.test.ts. Reproduce a
 * failure with FUZZ_SEED=<seed printed by fast-check>.
 */
import * as assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import type * as protobuf from 'protobufjs';
import { TestCluster } from '../harness/cluster';
import { p64 } from '../../src/util/ids';
import { protoRoot, rawStream, rawUnary } from './helpers';

const RUNS = Number(process.env.FUZZ_RUNS ?? 200);
/** The writer's objects live far from the small OIDs fast-check favours. */
const WRITER_OID_BASE = 0x7a00_0000_0000_0000n;
const STREAMS = new Set(['Iterate', 'Subscribe', 'DownloadBlob']);

function fieldArb(f: protobuf.Field, depth: number): fc.Arbitrary<unknown> {
  let one: fc.Arbitrary<unknown>;
  if (f.resolvedType && 'fields' in f.resolvedType)
    one = depth > 2 ? fc.constant({}) : messageArb(f.resolvedType as protobuf.Type, depth + 1);
  else
    switch (f.type) {
      case 'bytes':
        one = fc.oneof(
          fc.uint8Array({ minLength: 8, maxLength: 8 }),
          fc.uint8Array({ maxLength: 12 }),
          fc.uint8Array({ maxLength: 2048 }),
        );
        break;
      case 'string':
        one = fc.oneof(
          fc.constantFrom('', '1', 'archive', 'nope', 'x'.repeat(70)),
          fc.string({ maxLength: 40 }),
          fc.string({ unit: 'grapheme', maxLength: 20 }),
        );
        break;
      case 'bool':
        one = fc.boolean();
        break;
      case 'double':
      case 'float':
        one = fc.double();
        break;
      case 'uint32':
      case 'uint64':
        one = fc.oneof(fc.nat({ max: 2000 }), fc.constant(0xffffffff));
        break;
      default:
        one = fc.integer();
    }
  return f.repeated ? fc.array(one, { maxLength: 4 }) : one;
}

function messageArb(t: protobuf.Type, depth = 0): fc.Arbitrary<Record<string, unknown>> {
  const shape: Record<string, fc.Arbitrary<unknown>> = {};
  for (const f of t.fieldsArray) shape[f.name] = fieldArb(f, depth);
  return fc.record(shape, { requiredKeys: [] });
}

type Mutation = { kind: 'flip' | 'cut' | 'insert'; at: number; byte: number };
function mutate(b: Buffer, ms: Mutation[]): Buffer {
  let out = Buffer.from(b);
  for (const m of ms) {
    const i = out.length ? m.at % out.length : 0;
    if (m.kind === 'flip' && out.length) out[i] ^= m.byte || 1;
    else if (m.kind === 'cut') out = out.subarray(0, i);
    else out = Buffer.concat([out.subarray(0, i), Buffer.from([m.byte]), out.subarray(i)]);
  }
  return out;
}

describe('security: fuzzing the Storage API of a live three-node cluster', function () {
  let c: TestCluster;
  const clients = new Map<string, grpc.Client>();
  const committed: { oid: Buffer; tid: Buffer; data: Buffer }[] = [];
  let writerOid = 0n;

  before(async () => {
    c = await TestCluster.start(3, { ZEORAFT_TXN_TIMEOUT_MS: '2000', ZEORAFT_LOCK_WAIT_MS: '100' });
    for (const m of c.members)
      clients.set(
        m.id,
        new grpc.Client(`127.0.0.1:${m.client}`, grpc.credentials.createInsecure()),
      );
  });
  after(async () => {
    for (const cl of clients.values()) cl.close();
    await c?.stop();
  });

  async function write(): Promise<void> {
    const oid = p64(WRITER_OID_BASE + writerOid++);
    const data = Buffer.from(`object ${oid.toString('hex')}`);
    const ids = c.alive();
    const r = await c.rpc(ids[Number(writerOid) % ids.length]).call('Commit', {
      transaction: { user: 'writer', stores: [{ oid, data }] },
    });
    committed.push({ oid, tid: r.tid, data });
  }

  it('answers random and mutated requests with statuses, keeps every node up and every commit intact', async () => {
    for (let i = 0; i < 20; i++) await write();
    const root = protoRoot();
    const svc = root.lookupService('zeoraft.v1.Storage');
    const methods = Object.keys(svc.methods).filter((m) => m !== 'Pack');
    const types = new Map(methods.map((m) => [m, root.lookupType(svc.methods[m].requestType)]));
    const request = fc.constantFrom(...methods).chain((method) =>
      fc.record({
        method: fc.constant(method),
        node: fc.constantFrom(...c.members.map((m) => m.id)),
        msg: messageArb(types.get(method)!),
        how: fc.constantFrom('valid', 'mutated', 'random'),
        mutations: fc.array(
          fc.record({
            kind: fc.constantFrom<Mutation['kind']>('flip', 'cut', 'insert'),
            at: fc.nat(),
            byte: fc.integer({ min: 0, max: 255 }),
          }),
          { minLength: 1, maxLength: 4 },
        ),
        random: fc.uint8Array({ maxLength: 64 }),
      }),
    );

    let stop = false;
    let writerError: unknown;
    const writer = (async () => {
      while (!stop)
        await write().catch((e: unknown) => {
          writerError = e;
        });
    })();
    const codes = new Map<string, number>();
    try {
      await fc.assert(
        fc.asyncProperty(request, async (r) => {
          const T = types.get(r.method)!;
          let body: Buffer;
          try {
            body = Buffer.from(T.encode(T.fromObject(r.msg)).finish());
          } catch {
            body = Buffer.from(r.random);
          }
          if (r.how === 'mutated') body = mutate(body, r.mutations);
          if (r.how === 'random') body = Buffer.from(r.random);
          const client = clients.get(r.node)!;
          const p = `/zeoraft.v1.Storage/${r.method}`;
          const a = STREAMS.has(r.method)
            ? await rawStream(client, p, body, 100)
            : await rawUnary(client, p, body, new grpc.Metadata(), 1000);
          assert.ok(
            Number.isInteger(a.code) && a.code >= 0 && a.code <= 16,
            `not a gRPC status: ${String(a.code)}`,
          );
          assert.notEqual(a.code, grpc.status.UNKNOWN, `${r.method}: UNKNOWN ${a.details}`);
          if (a.code === grpc.status.INTERNAL)
            assert.match(a.details, /deserializ/i, `${r.method}: INTERNAL ${a.details}`);
          codes.set(grpc.status[a.code], (codes.get(grpc.status[a.code]) ?? 0) + 1);
        }),
        {
          numRuns: RUNS,
          seed: process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : undefined,
        },
      );
    } finally {
      stop = true;
      await writer;
    }
    assert.deepEqual(c.alive().sort(), ['n1', 'n2', 'n3'], 'no node exited');
    assert.ok(committed.length > 20, 'the writer committed during the run');
    assert.ok(codes.size > 3, `a variety of answers: ${JSON.stringify([...codes])}`);
    // writerError: a commit that failed was never acknowledged, so it is not checked.
    void writerError;
    const last = committed.reduce(
      (m, x) => (Buffer.compare(x.tid, m) > 0 ? x.tid : m),
      committed[0].tid,
    );
    for (const id of c.alive())
      for (const t of committed) {
        const l = await c.rpc(id).call('Load', { oid: t.oid, seenTid: last });
        assert.deepEqual(l.data, t.data, `${id}: ${t.oid.toString('hex')}`);
        assert.deepEqual(l.serial, t.tid);
      }
  });
});
