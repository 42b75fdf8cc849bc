import net from "node:net";

/** Something one side of a connection did, to be done to the other side. */
type Event = { kind: "data"; chunk: Buffer } | { kind: "end" } | { kind: "reset" } | { kind: "close" };

/**
 * How a connection's bytes travel: "flowing" forwards them; "held" keeps them (a partition: TCP
 * retransmits, so nothing is lost, only late); "stranded" drops them for good, keeping both sockets
 * open (the path the connection took is gone and nobody says so).
 */
type LinkState = "flowing" | "held" | "stranded";

class Link {
  state: LinkState;
  /** Unset for a connection accepted during a partition: its "SYN" has not got through yet. */
  upstream?: net.Socket;
  readonly toUpstream: Event[] = [];
  readonly toClient: Event[] = [];

  constructor(
    readonly client: net.Socket,
    state: LinkState,
  ) {
    this.state = state;
  }

  /** Does `e` to `to`, or keeps it while held; stranded links lose it. */
  pass(direction: "toUpstream" | "toClient", e: Event): void {
    if (this.state === "stranded") return;
    const to = direction === "toUpstream" ? this.upstream : this.client;
    if (this.state === "held" || !to) return void this[direction].push(e);
    apply(to, e);
  }

  /** Delivers what was held, in order, and forwards from now on. */
  flush(): void {
    this.state = "flowing";
    for (const e of this.toUpstream.splice(0)) apply(this.upstream!, e);
    for (const e of this.toClient.splice(0)) apply(this.client, e);
  }

  destroy(): void {
    this.client.destroy();
    this.upstream?.destroy();
  }
}

function apply(to: net.Socket, e: Event): void {
  if (to.destroyed) return;
  if (e.kind === "data") to.write(e.chunk);
  else if (e.kind === "end") to.end();
  else if (e.kind === "reset") to.resetAndDestroy();
  // A close without an end or an error first (a destroy): end our side once what was written is out.
  else to.end();
}

/**
 * A TCP proxy on 127.0.0.1 in front of `target`, standing for the network between an agent and
 * the control plane, so tests can cut it the ways real networks fail:
 * - `partition()`: packets dropped both ways, sockets left open, new connections not getting
 *   through either; `heal()` then delivers what was held, in order (TCP retransmits), as when a
 *   switch or a route comes back;
 * - `strand()`: the connections open now are dropped for good without a word (a NAT or load
 *   balancer that lost their state, a peer that lost power); new connections go through;
 * - `reject()`: every connection reset, and new ones reset at once until `heal()` (a firewall that
 *   rejects rather than drops).
 */
export class TcpProxy {
  private readonly links = new Set<Link>();
  private mode: "open" | "partitioned" | "rejecting" = "open";
  /** Connections ever accepted (to tell whether a client reconnected). */
  accepted = 0;

  private constructor(
    private readonly server: net.Server,
    private readonly targetPort: number,
    readonly port: number,
  ) {}

  static async start(targetPort: number): Promise<TcpProxy> {
    let proxy: TcpProxy | undefined;
    const server = net.createServer({ allowHalfOpen: true }, (socket) => proxy!.accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
    });
    proxy = new TcpProxy(server, targetPort, (server.address() as net.AddressInfo).port);
    return proxy;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  partition(): void {
    this.mode = "partitioned";
    for (const link of this.links) if (link.state === "flowing") link.state = "held";
  }

  /** Ends a partition or a rejection: held connections catch up, new ones go through. */
  heal(): void {
    this.mode = "open";
    for (const link of this.links) {
      if (link.state !== "held") continue;
      if (!link.upstream) this.connectUpstream(link);
      link.flush();
    }
  }

  strand(): void {
    for (const link of this.links) {
      link.state = "stranded";
      link.toUpstream.length = 0;
      link.toClient.length = 0;
    }
  }

  reject(): void {
    this.mode = "rejecting";
    for (const link of this.links) {
      link.client.resetAndDestroy();
      link.upstream?.resetAndDestroy();
      this.links.delete(link);
    }
  }

  async close(): Promise<void> {
    for (const link of this.links) link.destroy();
    this.links.clear();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: net.Socket): void {
    this.accepted++;
    if (this.mode === "rejecting") {
      client.on("error", () => undefined);
      client.resetAndDestroy();
      return;
    }
    const link = new Link(client, this.mode === "partitioned" ? "held" : "flowing");
    this.links.add(link);
    client.on("data", (chunk: Buffer) => link.pass("toUpstream", { kind: "data", chunk }));
    client.on("end", () => link.pass("toUpstream", { kind: "end" }));
    client.on("error", () => undefined); // the close that follows carries it
    client.on("close", (hadError) => {
      // A client that gave up before its connection ever got through leaves nothing behind.
      if (!link.upstream && link.state === "held") return void this.links.delete(link);
      link.pass("toUpstream", { kind: hadError ? "reset" : "close" });
      this.forgetIfClosed(link);
    });
    if (link.state === "flowing") this.connectUpstream(link);
  }

  /** Writes to a socket still connecting wait for the connection, so nothing needs holding here. */
  private connectUpstream(link: Link): void {
    const upstream = net.connect({ port: this.targetPort, host: "127.0.0.1", allowHalfOpen: true });
    link.upstream = upstream;
    upstream.on("data", (chunk: Buffer) => link.pass("toClient", { kind: "data", chunk }));
    upstream.on("end", () => link.pass("toClient", { kind: "end" }));
    upstream.on("error", () => undefined); // the close that follows carries it
    upstream.on("close", (hadError) => {
      link.pass("toClient", { kind: hadError ? "reset" : "close" });
      this.forgetIfClosed(link);
    });
  }

  private forgetIfClosed(link: Link): void {
    if (link.client.destroyed && link.upstream?.destroyed !== false) this.links.delete(link);
  }
}
