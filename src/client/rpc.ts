/**
 * A thin promise-based connection to one node's Storage service, mapping failures to the error
 * classes in ./errors. ClientStorage builds on it; tests and tools use it directly.
 */
import * as grpc from '@grpc/grpc-js';
import { storagePackage } from '../proto';
import type { StorageClient } from '../generated/zeoraft/v1/Storage';
import type { SubscribeRequest } from '../generated/zeoraft/v1/SubscribeRequest';
import type { SubscribeEvent__Output } from '../generated/zeoraft/v1/SubscribeEvent';
import type { IterateRequest } from '../generated/zeoraft/v1/IterateRequest';
import type { TransactionRecord__Output } from '../generated/zeoraft/v1/TransactionRecord';
import { fromGrpcError } from './errors';

import type { StorageDefinition } from '../generated/zeoraft/v1/Storage';
import type { MethodDefinition } from '@grpc/proto-loader';

export type UnaryMethod = Exclude<
  keyof StorageDefinition,
  'Iterate' | 'Subscribe' | 'UploadBlob' | 'DownloadBlob'
>;
export type ReqOf<K extends UnaryMethod> =
  StorageDefinition[K] extends MethodDefinition<infer R, any, any, any> ? R : never;
export type ResOf<K extends UnaryMethod> =
  StorageDefinition[K] extends MethodDefinition<any, any, any, infer R> ? R : never;

export interface RpcOptions {
  /** Default per-call timeout in milliseconds. */
  timeoutMs?: number;
  credentials?: grpc.ChannelCredentials;
  /** Metadata sent with every call (for example the security key). */
  metadata?: Record<string, string>;
  channelOptions?: grpc.ChannelOptions;
}

export class StorageRpc {
  readonly raw: StorageClient;
  private readonly timeoutMs: number;
  private readonly md: grpc.Metadata;

  constructor(
    readonly address: string,
    options: RpcOptions = {},
  ) {
    const Storage = storagePackage().zeoraft.v1.Storage;
    this.raw = new Storage(address, options.credentials ?? grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': 64 << 20,
      'grpc.max_send_message_length': 64 << 20,
      ...options.channelOptions,
    });
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.md = new grpc.Metadata();
    for (const [k, v] of Object.entries(options.metadata ?? {})) this.md.set(k, v);
  }

  /** The metadata every call carries (the security key), for streaming calls made on `raw`. */
  metadata(): grpc.Metadata {
    return this.md.clone();
  }

  /** Call a unary method; rejects with a ZeoRaftError subclass. */
  call<K extends UnaryMethod>(
    method: K,
    req: ReqOf<K>,
    timeoutMs = this.timeoutMs,
  ): Promise<ResOf<K>> {
    return new Promise((resolve, reject) => {
      const fn = (this.raw as any)[method] as (...a: any[]) => unknown;
      fn.call(
        this.raw,
        req,
        this.md,
        { deadline: Date.now() + timeoutMs },
        (err: grpc.ServiceError | null, res: any) =>
          err ? reject(fromGrpcError(err)) : resolve(res),
      );
    });
  }

  subscribe(
    req: SubscribeRequest,
    options: grpc.CallOptions = {},
  ): grpc.ClientReadableStream<SubscribeEvent__Output> {
    return this.raw.Subscribe(req, this.md, options);
  }

  /** All transactions in [start, stop], collected. */
  async iterate(
    req: IterateRequest,
    timeoutMs = this.timeoutMs,
  ): Promise<TransactionRecord__Output[]> {
    const out: TransactionRecord__Output[] = [];
    const stream = this.raw.Iterate(req, this.md, { deadline: Date.now() + timeoutMs });
    try {
      for await (const t of stream) out.push(t as TransactionRecord__Output);
    } catch (e) {
      throw fromGrpcError(e as grpc.ServiceError);
    }
    return out;
  }

  close(): void {
    this.raw.close();
  }
}
