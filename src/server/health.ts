/**
 * The standard gRPC health service (grpc.health.v1.Health) and server reflection
 * (grpc.reflection.v1 and v1alpha) on a node's client port, so any gRPC tool or client in any
 * language can discover the API and probe the node without the .proto files.
 *
 * Health follows the node's readiness (the same answer as HTTP /readyz): SERVING while it knows
 * a leader and has applied close to the commit index, NOT_SERVING otherwise, for the whole
 * server ("") and for each ZeoRaft service name. Readiness is polled, not pushed, so a Watch
 * sees a change within HEALTH_POLL_MS.
 */
import type * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation, ServingStatus, protoPath as HEALTH_PROTO } from 'grpc-health-check';
import { LOADER_OPTIONS } from '../proto';

/** How often the health status is recomputed from readiness.ready(). */
export const HEALTH_POLL_MS = 500;

/** Service names with a health status: "" is the server as a whole (the gRPC convention). */
export const HEALTH_SERVICES = ['', 'zeoraft.v1.Storage', 'zeoraft.v1.Admin'] as const;

/** Files described by reflection: the client contract, administration, and health itself. */
const REFLECTED_PROTOS = ['zeoraft/v1/storage.proto', 'zeoraft/v1/admin.proto'];

/** What health follows: the node's readiness (the same answer as HTTP /readyz). */
export interface Readiness {
  ready(): { ok: boolean; reason: string };
}

/** A running health service: stop() ends the polling and reports NOT_SERVING to watchers. */
export interface HealthHandle {
  stop(): void;
}

let reflectedDefinition: protoLoader.PackageDefinition | undefined;
function reflectedPackages(): protoLoader.PackageDefinition {
  reflectedDefinition ??= {
    ...protoLoader.loadSync(REFLECTED_PROTOS, LOADER_OPTIONS),
    ...protoLoader.loadSync(HEALTH_PROTO, LOADER_OPTIONS),
  };
  return reflectedDefinition;
}

/**
 * Register health and reflection on `server` (before it starts) and keep the health status in
 * step with `readiness.ready()` until the returned handle is stopped.
 */
export function addHealthAndReflection(server: grpc.Server, readiness: Readiness): HealthHandle {
  const health = new HealthImplementation();
  let last: ServingStatus | undefined;
  const set = (status: ServingStatus): void => {
    if (status === last) return; // Watch streams are sent changes only
    last = status;
    for (const name of HEALTH_SERVICES) health.setStatus(name, status);
  };
  set(readiness.ready().ok ? 'SERVING' : 'NOT_SERVING');
  health.addToServer(server);
  new ReflectionService(reflectedPackages()).addToServer(server);
  let timer: NodeJS.Timeout | undefined = setInterval(
    () => set(readiness.ready().ok ? 'SERVING' : 'NOT_SERVING'),
    HEALTH_POLL_MS,
  );
  timer.unref(); // never what keeps a process alive
  return {
    // Stop polling readiness and report NOT_SERVING to watchers (first thing in node.stop()).
    stop: () => {
      if (!timer) return;
      clearInterval(timer);
      timer = undefined;
      set('NOT_SERVING');
    },
  };
}
