/**
 * ZEO's sized messages: every message is a 4-byte unsigned big-endian length followed by that
 * many bytes. A pure byte-level parser (no sockets), so it is tested on its own.
 */

export const FRAME_HEADER_BYTES = 4;

export class FrameError extends Error {
  readonly code = 'ZEO_BAD_FRAME';
  constructor(message: string) {
    super(message);
    this.name = 'FrameError';
  }
}

/** One message as it goes on the wire. */
export function frame(payload: Uint8Array): Buffer {
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header.writeUInt32BE(payload.length, 0);
  return Buffer.concat([header, payload]);
}

/**
 * Splits a byte stream into messages. Invariant: `chunks` hold fewer bytes than one complete
 * message, so memory is bounded by `maxFrameBytes` plus one read. Each length is checked as soon
 * as its header arrives, before any of the body is kept.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Length of the message being read, or -1 while its header is incomplete. */
  private need = -1;
  private framesRead = 0;

  /**
   * @param maxFrameBytes the largest message accepted
   * @param firstFrameBytesMax the largest first message (a handshake is short: an unauthenticated
   *   peer must not make the server buffer a large message before it has said who it is)
   */
  constructor(
    private readonly maxFrameBytes: number,
    private readonly firstFrameBytesMax = maxFrameBytes,
  ) {}

  /** Feed bytes; returns the messages they complete. Throws FrameError on an oversized length. */
  push(chunk: Buffer): Buffer[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const out: Buffer[] = [];
    for (;;) {
      if (this.need < 0) {
        if (this.buffered < FRAME_HEADER_BYTES) break;
        const len = this.take(FRAME_HEADER_BYTES).readUInt32BE(0);
        const max = this.framesRead === 0 ? this.firstFrameBytesMax : this.maxFrameBytes;
        if (len > max)
          throw new FrameError(
            `${this.framesRead === 0 ? 'first ' : ''}message of ${len} bytes exceeds the limit of ${max}`,
          );
        this.need = len;
        this.framesRead++;
      }
      if (this.buffered < this.need) break;
      out.push(this.take(this.need));
      this.need = -1;
    }
    return out;
  }

  /** The length of the message whose body is being received (0 between messages). */
  get pendingFrameBytes(): number {
    return Math.max(0, this.need);
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const head = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.buffered = rest.length;
    return head;
  }
}
