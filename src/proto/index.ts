/**
 * Loading the .proto contract for gRPC, and the rich error details (google.rpc.Status with one
 * zeoraft.v1.ErrorDetail) shared by the server, which writes them, and clients, which read them.
 */
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as protobuf from 'protobufjs';
import { PROTO_DIR } from '../util/proto-path';
import type { ProtoGrpcType } from '../generated/storage';
import type { ErrorDetail__Output } from '../generated/zeoraft/v1/ErrorDetail';

/** Options matching the generated types in src/generated (see the `gen` script). */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

export function loadProto(file: string): grpc.GrpcObject {
  return grpc.loadPackageDefinition(protoLoader.loadSync(file, LOADER_OPTIONS));
}

let storageProto: ProtoGrpcType | undefined;
export function storagePackage(): ProtoGrpcType {
  storageProto ??= loadProto('zeoraft/v1/storage.proto') as unknown as ProtoGrpcType;
  return storageProto;
}

const richRoot = new protobuf.Root();
richRoot.resolvePath = (_origin, target) =>
  target.startsWith('google/protobuf/') ? target : path.join(PROTO_DIR, target);
richRoot.loadSync(['google/rpc/status.proto', 'zeoraft/v1/storage.proto']);
const StatusType = richRoot.lookupType('google.rpc.Status');
const SubscribeEventType = richRoot.lookupType('zeoraft.v1.SubscribeEvent');

/** Encode a SubscribeEvent once, to send the same bytes to many subscribers. */
export function encodeSubscribeEvent(ev: object): Buffer {
  return Buffer.from(SubscribeEventType.encode(SubscribeEventType.fromObject(ev)).finish());
}

/**
 * A service definition whose server-streaming responses may also be given as already-encoded
 * Buffers (written as they are), so a fan-out encodes each message once, not once per stream.
 */
export function withPreEncodedResponses<T extends grpc.ServiceDefinition>(
  def: T,
  methods: string[],
): T {
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = { ...def };
  for (const m of methods) {
    const d = def[m];
    out[m] = {
      ...d,
      responseSerialize: (v: unknown) => (Buffer.isBuffer(v) ? v : d.responseSerialize(v)),
    };
  }
  return out as unknown as T;
}
const DetailType = richRoot.lookupType('zeoraft.v1.ErrorDetail');
export const ERROR_DETAIL_TYPE_URL = 'type.googleapis.com/zeoraft.v1.ErrorDetail';
export const STATUS_DETAILS_KEY = 'grpc-status-details-bin';

export type ErrorKind = ErrorDetail__Output['kind'];
export interface ErrorDetailInput {
  kind: ErrorKind;
  oid?: Uint8Array;
  expectedSerial?: Uint8Array;
  actualSerial?: Uint8Array;
  currentData?: Uint8Array;
  leaderHint?: string;
  transient?: boolean;
}

/** google.rpc.Status bytes for the `grpc-status-details-bin` trailer. */
export function encodeStatusDetails(
  code: number,
  message: string,
  detail: ErrorDetailInput,
): Buffer {
  const value = DetailType.encode(
    DetailType.fromObject(detail as unknown as Record<string, unknown>),
  ).finish();
  const status = StatusType.fromObject({
    code,
    message,
    details: [{ type_url: ERROR_DETAIL_TYPE_URL, value }],
  });
  return Buffer.from(StatusType.encode(status).finish());
}

/** The ErrorDetail carried by an error's trailers, if any. */
export function decodeStatusDetails(
  metadata: grpc.Metadata | undefined,
): ErrorDetail__Output | undefined {
  const raw = metadata?.get(STATUS_DETAILS_KEY)[0];
  if (!raw || typeof raw === 'string') return undefined;
  const status = StatusType.toObject(StatusType.decode(raw)) as {
    details?: { type_url: string; value: Uint8Array }[];
  };
  const any = status.details?.find((d) => d.type_url === ERROR_DETAIL_TYPE_URL);
  if (!any) return undefined;
  return DetailType.toObject(DetailType.decode(any.value), {
    enums: String,
    defaults: true,
  }) as ErrorDetail__Output;
}
