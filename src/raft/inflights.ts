import { assert } from '../util/assert';

/**
 * Flow control for one peer in replicate state: the Append messages sent but not yet
 * acknowledged, as a FIFO ring of (last index, payload bytes).
 *
 * Invariants: 0 <= count <= capacity; queued indices strictly increase; bytes = sum of queued sizes.
 */
export class Inflights {
  private readonly indices: number[];
  private readonly sizes: number[];
  private start = 0;
  count = 0;
  bytes = 0;

  /** capacity: max messages in flight; maxBytes: max payload bytes in flight (0 = unlimited). */
  constructor(
    readonly capacity: number,
    readonly maxBytes: number,
  ) {
    assert(capacity >= 1, 'inflights capacity must be >= 1');
    this.indices = new Array<number>(capacity).fill(0);
    this.sizes = new Array<number>(capacity).fill(0);
  }

  add(index: number, size: number): void {
    assert(!this.full(), 'inflights: add while full');
    const slot = (this.start + this.count) % this.capacity;
    if (this.count > 0) {
      const prev = this.indices[(slot + this.capacity - 1) % this.capacity];
      assert(index > prev, `inflights: index ${index} not after ${prev}`);
    }
    this.indices[slot] = index;
    this.sizes[slot] = size;
    this.count++;
    this.bytes += size;
  }

  /** Acknowledge every in-flight message whose last index <= to. */
  freeLE(to: number): void {
    while (this.count > 0 && this.indices[this.start] <= to) {
      this.bytes -= this.sizes[this.start];
      this.start = (this.start + 1) % this.capacity;
      this.count--;
    }
    if (this.count === 0) this.start = 0;
  }

  /** Forget the oldest in-flight message (it was probably lost; the peer is known alive). */
  freeFirstOne(): void {
    if (this.count > 0) this.freeLE(this.indices[this.start]);
  }

  full(): boolean {
    return this.count === this.capacity || (this.maxBytes > 0 && this.bytes >= this.maxBytes);
  }

  reset(): void {
    this.start = 0;
    this.count = 0;
    this.bytes = 0;
  }
}
