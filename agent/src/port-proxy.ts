import net from "node:net";

/** Listens on hostPort (all interfaces) and pipes each connection to 127.0.0.1:containerPort. */
export class PortProxy {
  private readonly sockets = new Set<net.Socket>();
  /** When a byte last went through, in ms since the epoch (0: never); idle auto-stop reads it. */
  lastTraffic = 0;
  private readonly server: net.Server;

  private constructor(
    readonly hostPort: number,
    readonly containerPort: number,
  ) {
    // Half-open both ways, so that a client that ends its request still gets the whole answer.
    this.server = net.createServer({ allowHalfOpen: true }, (client) => this.link(client, containerPort));
  }

  static listen(hostPort: number, containerPort: number): Promise<PortProxy> {
    const proxy = new PortProxy(hostPort, containerPort);
    return new Promise((resolve, reject) => {
      proxy.server.on("error", reject); // after listening, a late error has no one to tell
      proxy.server.listen(hostPort, "0.0.0.0", () => resolve(proxy));
    });
  }

  private link(client: net.Socket, containerPort: number): void {
    const upstream = net.connect({ port: containerPort, host: "127.0.0.1", allowHalfOpen: true });
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.once("close", () => this.sockets.delete(s));
    }
    const destroy = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("error", destroy);
    upstream.on("error", destroy);
    // pipe() ends each side when the other ends; with the client gone nobody can read the rest.
    client.once("close", () => upstream.destroy());
    const seen = () => (this.lastTraffic = Date.now());
    client.on("data", seen);
    upstream.on("data", seen);
    client.pipe(upstream);
    upstream.pipe(client);
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

export async function closeAll(proxies: PortProxy[]): Promise<void> {
  await Promise.all(proxies.map((p) => p.close()));
}

/** Whether something accepts TCP connections on 127.0.0.1:port. */
export function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: "127.0.0.1" });
    const done = (up: boolean) => {
      socket.destroy();
      resolve(up);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}
