/** The sized-message parser and the message codec on their own, without sockets. */
import * as assert from 'node:assert/strict';
import { FrameDecoder, FrameError, frame } from '../../src/zeo/framing';
import { MarshalError, decodeMessage, encodeMessage } from '../../src/zeo/marshal';

describe('ZEO framing and marshalling', () => {
  it('reassembles messages split and joined across reads, in order', () => {
    const wire = Buffer.concat([
      frame(Buffer.from('M5')),
      frame(Buffer.alloc(0)),
      frame(Buffer.from('hello')),
    ]);
    for (let cut = 0; cut <= wire.length; cut++) {
      const d = new FrameDecoder(1024);
      const got = [...d.push(wire.subarray(0, cut)), ...d.push(wire.subarray(cut))];
      assert.deepEqual(
        got.map((m) => m.toString()),
        ['M5', '', 'hello'],
      );
    }
  });

  it('refuses a length over the limit as soon as the header arrives', () => {
    const d = new FrameDecoder(10);
    assert.throws(() => d.push(Buffer.from([0, 0, 0, 11])), FrameError);
  });

  it('holds the first message (the handshake) to its own, smaller limit', () => {
    const d = new FrameDecoder(1024, 8);
    assert.deepEqual(
      d
        .push(Buffer.concat([frame(Buffer.from('M5')), frame(Buffer.alloc(100))]))
        .map((m) => m.length),
      [2, 100],
    );
    const e = new FrameDecoder(1024, 8);
    assert.throws(() => e.push(Buffer.from([0, 0, 0, 9])), FrameError);
    assert.equal(new FrameDecoder(1024, 8).pendingFrameBytes, 0);
    const f = new FrameDecoder(1024);
    f.push(Buffer.from([0, 0, 2, 0, 1]));
    assert.equal(f.pendingFrameBytes, 512, 'the length is known before the body arrives');
  });

  it('round-trips [msgid, flag, method, args] and rejects other shapes', () => {
    const m = decodeMessage(
      encodeMessage([Buffer.alloc(8), Buffer.alloc(8, 1)], 0, 'loadBefore', [1, null]),
    );
    assert.equal(m.method, 'loadBefore');
    assert.deepEqual(m.args, [1, null]);
    assert.throws(() => decodeMessage(Buffer.from([0xc1])), MarshalError);
    assert.throws(() => decodeMessage(encodeMessage(1, 0, 'x', 'y').subarray(0, 3)), MarshalError);
    assert.throws(
      () => decodeMessage(encodeMessage(1, 'no' as unknown as number, 'x', [])),
      MarshalError,
    );
  });
});
