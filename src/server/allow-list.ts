/** Address allow-lists (CIDR) of the node's listeners. */
import * as net from 'node:net';

/** A CIDR allow-list (IPv4 and IPv6; IPv4-mapped IPv6 addresses match IPv4 entries). */
export class AllowList {
  private readonly list = new net.BlockList();
  readonly empty: boolean;

  constructor(readonly entries: string[]) {
    this.empty = entries.length === 0;
    for (const raw of entries) {
      const e = raw.trim();
      const [addr, bits] = e.split('/');
      const type = net.isIPv4(addr) ? 'ipv4' : net.isIPv6(addr) ? 'ipv6' : undefined;
      if (!type)
        throw new Error(`invalid configuration: ${JSON.stringify(e)} is not an IP address or CIDR`);
      const max = type === 'ipv4' ? 32 : 128;
      const prefix = bits === undefined ? max : Number(bits);
      if (!Number.isInteger(prefix) || prefix < 0 || prefix > max)
        throw new Error(`invalid configuration: ${JSON.stringify(e)} has a bad prefix length`);
      this.list.addSubnet(addr, prefix, type);
    }
  }

  allows(address: string | undefined): boolean {
    if (this.empty) return true;
    if (!address) return false;
    let a = address.replace(/^\[|\]$/g, '').replace(/%.*$/, '');
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a);
    if (mapped) a = mapped[1];
    if (net.isIPv4(a)) return this.list.check(a, 'ipv4');
    if (net.isIPv6(a)) return this.list.check(a, 'ipv6');
    return false;
  }
}
