/**
 * ZEO 5 messages in msgpack framing ("M5"): each message is the array
 * `[msgid, flag, method, args]`. Requests carry flag 0 (two-way) or 1 (one-way); replies use the
 * method name ".reply" with flag 0 for a result and flag 2 for an exception given as
 * `[python_class_name, args]` (ZEO.asyncio.marshal.reduce_exception). Server-to-client calls are
 * one-way with msgid 0 and flag true. Python bytes map to msgpack bin, str to str, tuples to arrays.
 */
import { Decoder, Encoder } from '@msgpack/msgpack';

/** The greeting a server sends: encoding letter "M" (msgpack) + protocol version "5". */
export const PROTOCOL_M5 = 'M5';
/** A status probe sent instead of a protocol version; answered with JSON, then the connection closes. */
export const RUOK = 'ruok';
export const REPLY = '.reply';
export const FLAG_CALL = 0;
export const FLAG_ONEWAY = 1;
export const FLAG_ERROR = 2;
/** Client heartbeats carry this message id and are ignored. */
export const HEARTBEAT_MSGID = -1;

export interface Message {
  /** Any msgpack value: clients use integers, and `[oid, tid]` for loadBefore. */
  msgid: unknown;
  flag: number;
  method: string;
  args: unknown[];
}

export class MarshalError extends Error {
  readonly code = 'ZEO_BAD_MESSAGE';
  constructor(message: string) {
    super(message);
    this.name = 'MarshalError';
  }
}

const encoder = new Encoder({ ignoreUndefined: false });
// The decoder keeps its own stack (no recursion), so deep nesting cannot overflow ours.
const decoder = new Decoder();

export function encodeMessage(
  msgid: unknown,
  flag: number | boolean,
  method: string,
  args: unknown,
): Buffer {
  const u8 = encoder.encode([msgid, flag, method, args]);
  return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}

/** Decode and shape-check one message; MarshalError when it is not `[msgid, flag, name, args]`. */
export function decodeMessage(bytes: Uint8Array): Message {
  let v: unknown;
  try {
    v = decoder.decode(bytes);
  } catch (e) {
    throw new MarshalError(`undecodable message: ${e instanceof Error ? e.message : String(e)}`);
  }
  return shapeMessage(v);
}

/** The longest bytes or str a message id may hold (an OID or TID is 8 bytes). */
const MSGID_SCALAR_BYTES_MAX = 64;
/** The most elements of a tuple message id. */
const MSGID_ELEMENTS_MAX = 4;

function isScalarId(v: unknown): boolean {
  if (v === null || typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean')
    return true;
  if (typeof v === 'string') return v.length <= MSGID_SCALAR_BYTES_MAX;
  return v instanceof Uint8Array && v.length <= MSGID_SCALAR_BYTES_MAX;
}

/**
 * ZEO clients number their messages, except loadBefore, whose id is (oid, tid). The id is echoed
 * in the reply, so anything else (a deep or large structure) is refused as a bad message.
 */
function isMessageId(v: unknown): boolean {
  if (Array.isArray(v)) return v.length <= MSGID_ELEMENTS_MAX && v.every(isScalarId);
  return isScalarId(v);
}

/** A decoded message (of either encoding) checked to be `[msgid, flag, name, args]`. */
export function shapeMessage(v: unknown): Message {
  if (!Array.isArray(v) || v.length !== 4)
    throw new MarshalError('a message must be a 4-element array [msgid, flag, method, args]');
  const [msgid, rawFlag, method, args] = v as unknown[];
  if (!isMessageId(msgid))
    throw new MarshalError(
      'a message id must be an integer, or a tuple of at most 4 scalars (loadBefore sends (oid, tid))',
    );
  const flag = rawFlag === true ? 1 : rawFlag === false ? 0 : rawFlag;
  if (typeof flag !== 'number' || !Number.isInteger(flag))
    throw new MarshalError('the message flag must be an integer or boolean');
  if (typeof method !== 'string') throw new MarshalError('the method name must be a string');
  let list: unknown[];
  if (Array.isArray(args)) list = args;
  else if (args === null && method === REPLY) list = [];
  else throw new MarshalError(`arguments of ${method} must be an array`);
  return { msgid, flag, method, args: list };
}

export function decodeValue(bytes: Uint8Array): unknown {
  return decoder.decode(bytes);
}

export function encodeValue(v: unknown): Buffer {
  const u8 = encoder.encode(v);
  return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}
