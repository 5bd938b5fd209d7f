/**
 * A value bound once, after its holder was handed out: for the one start-up cycle that is real
 * at run time (the peer transport delivers messages to the Raft replicator, which sends through
 * the transport). The holder is passed explicitly; using it before it is bound is a programmer
 * error, asserted.
 */
import { assert } from './assert';

export class LateBound<T> {
  private value: T | undefined;

  constructor(private readonly what: string) {}

  bind(value: T): void {
    assert(this.value === undefined, `${this.what} bound twice`);
    this.value = value;
  }

  get(): T {
    assert(this.value !== undefined, `${this.what} used before it was bound`);
    return this.value;
  }
}
