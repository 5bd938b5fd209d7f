/**
 * ZEO 5 messages in pickle framing ("Z5"), ZEO's default encoding, for clients without the
 * `msgpack` package. A ZEO client pickles each message `(msgid, flags, method, args)` with pickle
 * protocol 3 in fast mode (ZEO.asyncio.marshal.encoder: no memo), and its arguments are plain
 * values, which are all this reads (pickle-decode.ts: a restricted decoder that never looks up a
 * class or calls anything, with bounds on everything it builds).
 *
 * Replies go out as the same plain values (arrays as tuples, which is what a ZEO client's msgpack
 * decoder gives it too); errors as `(class name, args)` with flag 2, as in M5 (pickle-encode.ts).
 */
import { type Message, shapeMessage } from './marshal';
import { unpickle } from './pickle-decode';
import { pickle } from './pickle-encode';

export {
  PICKLE_DEPTH_MAX,
  PICKLE_ITEMS_MAX,
  PICKLE_LONG_BYTES_MAX,
  PICKLE_MEMO_ENTRIES_MAX,
  PickleError,
  unpickle,
} from './pickle-decode';
export { pickle } from './pickle-encode';

/** The greeting of a server preferring pickle: encoding letter "Z" + protocol version "5". */
export const PROTOCOL_Z5 = 'Z5';

/** Decode and shape-check one message (see marshal.ts's decodeMessage). */
export function decodePickledMessage(bytes: Uint8Array): Message {
  return shapeMessage(unpickle(bytes));
}

export function encodePickledMessage(
  msgid: unknown,
  flag: number | boolean,
  method: string,
  args: unknown,
): Buffer {
  return pickle([msgid, flag, method, args]);
}
