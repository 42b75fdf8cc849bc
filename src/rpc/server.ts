import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import type { Duplex } from "node:stream";
import type { TLSSocket } from "node:tls";

type Handler = (req: http.IncomingMessage | http2.Http2ServerRequest, res: http.ServerResponse | http2.Http2ServerResponse) => void;

const H2_PREFACE = Buffer.from("PRI * HTTP/2.0");
const FIRST_BYTES_TIMEOUT_MS = 10_000;

/**
 * One port for everything: gRPC and Connect over HTTP/2, Connect and gRPC-Web over HTTP/1.1.
 * With TLS, ALPN picks the protocol. Without TLS, the first bytes decide: an HTTP/2 client opens
 * with the "PRI * HTTP/2.0" preface, which no HTTP/1 request starts with.
 */
export class RpcServer {
  private readonly h2: http2.Http2Server | http2.Http2SecureServer;
  private readonly h1?: http.Server;
  private readonly listener: net.Server;
  private readonly sessions = new Set<http2.ServerHttp2Session>();
  /** Every TCP connection, whatever it turned out to speak; what is left at the deadline is cut. */
  private readonly connections = new Set<net.Socket>();
  /** HTTP/1.1 connections (TLS sockets under TLS). */
  private readonly sockets = new Set<Duplex>();
  /** HTTP/1 sockets with a request in flight; the others are idle and can be closed at once on shutdown. */
  private readonly busy = new Set<Duplex>();
  private closing = false;

  /**
   * `maxStreams`: concurrent HTTP/2 streams one connection may open (calls beyond it are refused).
   * `keepaliveMs`: PING period of every HTTP/2 connection (0: none); see keepAlive().
   */
  constructor(handler: Handler, tls?: { cert: Buffer; key: Buffer }, maxStreams = 1000, keepaliveMs = 30_000) {
    const settings = { maxConcurrentStreams: maxStreams };
    if (tls) {
      this.h2 = http2.createSecureServer({ ...tls, allowHTTP1: true, settings }, handler);
      this.listener = this.h2;
    } else {
      this.h2 = http2.createServer({ settings }, handler);
      this.h1 = http.createServer(handler);
      // This server never listens itself (it is handed sockets); 'listening' is what starts Node's
      // enforcement of headersTimeout and requestTimeout, which slow clients must not escape.
      this.h1.emit("listening");
      this.listener = net.createServer((socket) => this.route(socket));
    }
    this.listener.on("connection", (socket: net.Socket) => {
      this.connections.add(socket);
      socket.once("close", () => this.connections.delete(socket));
    });
    this.h2.on("session", (session: http2.ServerHttp2Session) => {
      this.sessions.add(session);
      session.once("close", () => this.sessions.delete(session));
      if (keepaliveMs > 0) keepAlive(session, keepaliveMs);
    });
    // HTTP/1.1 connections, under TLS (where ALPN did not pick h2) as well as in plaintext.
    const trackH1 = (socket: Duplex) => {
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
    };
    if (tls) this.h2.on("secureConnection", (socket: TLSSocket) => socket.alpnProtocol !== "h2" && trackH1(socket));
    else this.h1!.on("connection", trackH1);
    // Node's own closeIdleConnections() only knows sockets of a server that listened itself, and the
    // plaintext HTTP/1 server never does (it is handed sockets), so idleness is tracked here.
    (this.h1 ?? this.h2).on("request", (req: http.IncomingMessage, res: http.ServerResponse) => {
      const socket = req.socket;
      if (!this.sockets.has(socket)) return; // an HTTP/2 stream
      this.busy.add(socket);
      if (this.closing) res.setHeader("connection", "close");
      res.once("close", () => {
        this.busy.delete(socket);
        if (this.closing) socket.end();
      });
    });
  }

  private route(socket: net.Socket): void {
    let head = Buffer.alloc(0);
    // A client that connects and says nothing is dropped rather than kept forever.
    socket.setTimeout(FIRST_BYTES_TIMEOUT_MS, () => socket.destroy());
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const n = Math.min(head.length, H2_PREFACE.length);
      const isH2 = head.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
      if (isH2 && head.length < H2_PREFACE.length) return; // need more bytes to be sure
      socket.off("data", onData);
      socket.setTimeout(0);
      socket.pause();
      socket.unshift(head);
      // The HTTP/2 session takes the paused socket's buffered bytes itself (resuming here would
      // hand them to nobody); the HTTP/1 server expects a flowing socket.
      if (isH2) {
        this.h2.emit("connection", socket);
      } else {
        this.h1!.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", onData);
    socket.on("error", () => socket.destroy());
  }

  listen(port: number, host: string): Promise<number> {
    return new Promise((resolve, reject) => {
      this.listener.once("error", reject);
      this.listener.listen(port, host, () => {
        this.listener.off("error", reject);
        resolve((this.listener.address() as net.AddressInfo).port);
      });
    });
  }

  /**
   * Stops accepting connections, lets open calls finish (HTTP/2 GOAWAY, idle HTTP/1 connections
   * closed) and, after `timeoutMs`, cuts whatever is left.
   */
  async close(timeoutMs: number): Promise<void> {
    this.closing = true;
    const closed = new Promise<void>((resolve) => this.listener.close(() => resolve()));
    for (const session of this.sessions) session.close();
    await new Promise<void>((resolve) => {
      const deadline = Date.now() + timeoutMs;
      const poll = setInterval(() => {
        for (const socket of this.sockets) if (!this.busy.has(socket)) socket.destroy();
        if (this.connections.size > 0 && Date.now() < deadline) return;
        clearInterval(poll);
        for (const socket of this.connections) socket.destroy();
        resolve();
      }, 20);
    });
    await closed;
  }
}

/**
 * A peer that vanished without closing its connection (a host powered off, a path gone) would keep
 * its streams open until TCP gives up, minutes later: an agent's session would go on receiving the
 * host's commands. A PING every `periodMs`, and the connection closed when one is unanswered as long.
 */
function keepAlive(session: http2.ServerHttp2Session, periodMs: number): void {
  const timer = setInterval(() => {
    if (session.destroyed || session.closed) return clearInterval(timer);
    const dead = setTimeout(() => session.destroy(), periodMs).unref();
    const sent = session.ping((err) => {
      clearTimeout(dead);
      if (err && !session.destroyed) session.destroy();
    });
    if (!sent) clearTimeout(dead); // a PING still outstanding: its own timer decides
  }, periodMs);
  timer.unref();
  session.once("close", () => clearInterval(timer));
}
