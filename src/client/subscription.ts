/**
 * One Subscribe stream to one node: events are handed over synchronously and in order; the
 * stream's end (error, server end, or silence longer than `idleMaxMs` — the server sends a
 * progress event at least every progress interval) is reported exactly once.
 */
import type * as grpc from '@grpc/grpc-js';
import type { SubscribeEvent__Output } from '../generated/zeoraft/v1/SubscribeEvent';
import type { SubscribeRequest } from '../generated/zeoraft/v1/SubscribeRequest';
import { DisconnectedError, ZeoRaftError, fromGrpcError } from './errors';
import type { StorageRpc } from './rpc';

export interface SubscriptionHandlers {
  onEvent(ev: SubscribeEvent__Output): void;
  onEnd(e: ZeoRaftError): void;
}

export class Subscription {
  private readonly call: grpc.ClientReadableStream<SubscribeEvent__Output>;
  private watchdog: NodeJS.Timeout | undefined;
  private ended = false;

  constructor(
    rpc: StorageRpc,
    req: SubscribeRequest,
    private readonly idleMaxMs: number,
    private readonly handlers: SubscriptionHandlers,
  ) {
    this.call = rpc.subscribe(req);
    this.call.on('data', (ev: SubscribeEvent__Output) => {
      if (this.ended) return;
      this.arm();
      this.handlers.onEvent(ev);
    });
    this.call.on('error', (e: grpc.ServiceError) => this.end(fromGrpcError(e)));
    this.call.on('end', () =>
      this.end(new DisconnectedError(`subscription to ${rpc.address} ended by the server`)),
    );
    this.arm();
  }

  /** Stop the stream; onEnd is not called. */
  cancel(): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.watchdog);
    this.call.cancel();
  }

  private arm(): void {
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(
      () =>
        this.end(
          new DisconnectedError(`subscription silent for ${this.idleMaxMs} ms; node stalled?`),
        ),
      this.idleMaxMs,
    );
  }

  private end(e: ZeoRaftError): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.watchdog);
    this.call.cancel();
    this.handlers.onEnd(e);
  }
}
