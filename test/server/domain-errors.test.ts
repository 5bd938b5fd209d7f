/**
 * Domain errors and their gRPC mapping (src/server/errors.ts): each code keeps the status, message
 * and ErrorDetail trailer clients acted on before the errors had codes, a refusal relayed from the
 * leader comes back out exactly as it came in, and the ZEO door's retry rule
 * (proposalMayBeRetried) says yes for exactly the statuses it used to retry.
 */
import * as assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { decodeStatusDetails } from '../../src/proto';
import {
  DomainError,
  deadlineExceeded,
  definitelyNotAppended,
  invalidArgument,
  limitExceeded,
  noLeaderInTime,
  notLeader,
  outcomeUnknown,
  proposalMayBeRetried,
  readOnly,
  refused,
  unknownStorage,
} from '../../src/server/domain-errors';
import { RpcError, domainErrorFromStatus, toServiceError } from '../../src/server/errors';
import type { ErrorDetail__Output } from '../../src/generated/zeoraft/v1/ErrorDetail';
import { StorageError } from '../../src/storage/errors';
import { zodbException } from '../../src/zeo/errors';
import { ZeoException } from '../../src/zeo/errors';

/** What a client sees: status, message, and the trailer's kind, leader hint and transient flag. */
function wire(e: unknown): {
  code: number;
  message: string;
  detail?: Partial<ErrorDetail__Output>;
} {
  const se = toServiceError(e);
  const d = decodeStatusDetails(se.metadata as grpc.Metadata);
  return {
    code: se.code!,
    message: se.details!,
    ...(d ? { detail: { kind: d.kind, leaderHint: d.leaderHint, transient: d.transient } } : {}),
  };
}

const detail = (kind: string, leaderHint = '', transient = false): Partial<ErrorDetail__Output> =>
  ({ kind, leaderHint, transient }) as Partial<ErrorDetail__Output>;

describe('domain errors mapped to gRPC statuses', function () {
  it('keeps the status, message and detail of every code', function () {
    const S = grpc.status;
    const cases: [DomainError, ReturnType<typeof wire>][] = [
      [
        notLeader('no leader', '127.0.0.1:7000'),
        {
          code: S.UNAVAILABLE,
          message: 'no leader',
          detail: detail('NOT_LEADER', '127.0.0.1:7000', true),
        },
      ],
      [
        noLeaderInTime('late'),
        { code: S.DEADLINE_EXCEEDED, message: 'late', detail: detail('NOT_LEADER', '', true) },
      ],
      [
        outcomeUnknown('lost'),
        { code: S.UNAVAILABLE, message: 'lost', detail: detail('OUTCOME_UNKNOWN', '', true) },
      ],
      [
        outcomeUnknown('lost late', true),
        {
          code: S.DEADLINE_EXCEEDED,
          message: 'lost late',
          detail: detail('OUTCOME_UNKNOWN', '', true),
        },
      ],
      [deadlineExceeded('not applied'), { code: S.DEADLINE_EXCEEDED, message: 'not applied' }],
      [
        limitExceeded('max_txn_bytes', 'too big'),
        {
          code: S.RESOURCE_EXHAUSTED,
          message: 'limit max_txn_bytes exceeded: too big',
          detail: detail('LIMIT'),
        },
      ],
      [
        limitExceeded('max_prepared_txns', 'busy', true),
        {
          code: S.RESOURCE_EXHAUSTED,
          message: 'limit max_prepared_txns exceeded: busy',
          detail: detail('LIMIT', '', true),
        },
      ],
      [
        readOnly('storage "1" is read-only'),
        {
          code: S.PERMISSION_DENIED,
          message: 'storage "1" is read-only',
          detail: detail('READ_ONLY'),
        },
      ],
      [
        invalidArgument('oid is required'),
        { code: S.INVALID_ARGUMENT, message: 'oid is required', detail: detail('INVALID') },
      ],
      [
        unknownStorage('unknown storage "x"'),
        { code: S.NOT_FOUND, message: 'unknown storage "x"', detail: detail('INVALID') },
      ],
      [
        refused('membership change pending'),
        {
          code: S.FAILED_PRECONDITION,
          message: 'membership change pending',
          detail: detail('INVALID'),
        },
      ],
    ];
    for (const [e, expected] of cases) assert.deepEqual(wire(e), expected, e.message);
  });

  it('maps storage errors and anything else as before (INTERNAL for the unexpected)', function () {
    assert.deepEqual(wire(new StorageError('LOCKED', 'held')), {
      code: grpc.status.ABORTED,
      message: 'held',
      detail: detail('LOCKED', '', true),
    });
    assert.deepEqual(wire(new Error('boom')), {
      code: grpc.status.INTERNAL,
      message: 'internal error: boom',
    });
  });

  it('gives back a refusal relayed from the leader exactly as it came, with the leader hint', function () {
    const hint = '127.0.0.1:7001';
    for (const code of [
      grpc.status.UNAVAILABLE,
      grpc.status.DEADLINE_EXCEEDED,
      grpc.status.RESOURCE_EXHAUSTED,
      grpc.status.PERMISSION_DENIED,
      grpc.status.FAILED_PRECONDITION,
    ])
      for (const kind of ['NOT_LEADER', 'OUTCOME_UNKNOWN', 'LIMIT', 'READ_ONLY', 'INVALID']) {
        const d = { kind, leaderHint: '', transient: kind !== 'INVALID' } as ErrorDetail__Output;
        const e = domainErrorFromStatus(code, 'forwarding failed: x', d, hint);
        assert.deepEqual(wire(e), {
          code,
          message: 'forwarding failed: x',
          detail: detail(kind, hint, d.transient),
        });
      }
    const bare = domainErrorFromStatus(grpc.status.INVALID_ARGUMENT, 'bad', undefined, hint);
    assert.deepEqual(wire(bare), { code: grpc.status.INVALID_ARGUMENT, message: 'bad' });
    assert.ok(bare.relayed instanceof RpcError);
  });

  it('retries a proposal for exactly the statuses the ZEO door used to retry', function () {
    const retried = new Set<number>([
      grpc.status.UNAVAILABLE,
      grpc.status.DEADLINE_EXCEEDED,
      grpc.status.RESOURCE_EXHAUSTED,
    ]);
    const made = [
      notLeader('x'),
      noLeaderInTime('x'),
      outcomeUnknown('x'),
      outcomeUnknown('x', true),
      deadlineExceeded('x'),
      limitExceeded('n', 'x'),
      readOnly('x'),
      invalidArgument('x'),
      unknownStorage('x'),
      refused('x'),
    ];
    for (const code of Object.values(grpc.status).filter((v) => typeof v === 'number'))
      for (const kind of [undefined, 'NOT_LEADER', 'OUTCOME_UNKNOWN', 'LIMIT', 'READ_ONLY']) {
        const d = kind
          ? ({ kind, leaderHint: '', transient: true } as ErrorDetail__Output)
          : undefined;
        made.push(domainErrorFromStatus(code as grpc.status, 'm', d, ''));
      }
    for (const e of made)
      assert.equal(proposalMayBeRetried(e), retried.has(wire(e).code), `${e.code} ${e.message}`);
    assert.equal(proposalMayBeRetried(new StorageError('UNAVAILABLE', 'installing')), false);
  });

  it('says a command was certainly not appended only for NOT_LEADER answered as UNAVAILABLE', function () {
    assert.equal(definitelyNotAppended(notLeader('x')), true);
    assert.equal(definitelyNotAppended(noLeaderInTime('x')), false);
    assert.equal(definitelyNotAppended(outcomeUnknown('x')), false);
    const relayed = (code: grpc.status, kind: string) =>
      domainErrorFromStatus(code, 'm', { kind, leaderHint: '' } as ErrorDetail__Output, 'h');
    assert.equal(definitelyNotAppended(relayed(grpc.status.UNAVAILABLE, 'NOT_LEADER')), true);
    assert.equal(
      definitelyNotAppended(relayed(grpc.status.DEADLINE_EXCEEDED, 'NOT_LEADER')),
      false,
    );
    assert.equal(definitelyNotAppended(relayed(grpc.status.UNAVAILABLE, 'OUTCOME_UNKNOWN')), false);
  });
});

describe('storage API errors mapped to ZODB exceptions (src/zeo/errors.ts)', function () {
  const name = (e: unknown): string => (e as ZeoException).pyClass;
  it('names the ZODB class for each storage error, StorageError for domain errors', function () {
    const oid = Buffer.alloc(8, 1);
    const conflict = { oid, expected: Buffer.alloc(8), actual: Buffer.alloc(8, 2) };
    assert.equal(
      name(zodbException(new StorageError('NOT_FOUND', 'x'), oid)),
      'ZODB.POSException.POSKeyError',
    );
    assert.equal(
      name(zodbException(new StorageError('HISTORY_PACKED', 'x'))),
      'ZODB.POSException.POSKeyError',
    );
    assert.equal(
      name(zodbException(new StorageError('CONFLICT', 'x', conflict))),
      'ZODB.POSException.ConflictError',
    );
    assert.equal(
      name(zodbException(new StorageError('LOCKED', 'x'))),
      'ZODB.POSException.ConflictError',
    );
    assert.equal(
      name(zodbException(new StorageError('READ_CONFLICT', 'x', conflict))),
      'ZODB.POSException.ReadConflictError',
    );
    assert.equal(
      name(zodbException(new StorageError('UNKNOWN_TRANSACTION', 'x'))),
      'ZODB.POSException.StorageTransactionError',
    );
    assert.equal(
      name(zodbException(new StorageError('INVALID', 'x'))),
      'ZODB.POSException.StorageError',
    );
    const limit = zodbException(limitExceeded('max_txn_bytes', 'too big')) as ZeoException;
    assert.equal(limit.pyClass, 'ZODB.POSException.StorageError');
    assert.equal(limit.message, 'limit max_txn_bytes exceeded: too big');
    const other = new Error('not ours');
    assert.equal(zodbException(other), other);
  });
});
