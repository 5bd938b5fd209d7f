/** Where members live: the configured peers, overridden by addresses recorded through the log. */
import type { ObjectStore } from '../storage/object-store';
import type { PeerConfig } from './config';

export class AddressBook {
  constructor(
    private readonly configured: PeerConfig[],
    private readonly store: ObjectStore,
  ) {}

  private find(id: string): { peerAddress?: string; clientAddress?: string } | undefined {
    return (
      this.store.members().find((m) => m.id === id) ?? this.configured.find((p) => p.id === id)
    );
  }

  peerAddress(id: string): string {
    return this.find(id)?.peerAddress ?? '';
  }

  clientAddress(id: string): string {
    return this.find(id)?.clientAddress ?? '';
  }

  all(): PeerConfig[] {
    const byId = new Map<string, PeerConfig>();
    for (const p of this.configured) byId.set(p.id, { ...p });
    for (const m of this.store.members())
      byId.set(m.id, {
        id: m.id,
        peerAddress: m.peerAddress ?? '',
        clientAddress: m.clientAddress ?? '',
      });
    return [...byId.values()];
  }
}
