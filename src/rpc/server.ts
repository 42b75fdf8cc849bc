import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import type { Duplex } from "node:stream";
import type { TLSSocket } from "node:tls";
import { Code, ConnectError, createConnectRouter, createContextValues, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { universalRequestFromNodeRequest, universalResponseToNodeResponse } from "@connectrpc/connect-node";
import type { UniversalHandler } from "@connectrpc/connect/protocol";
import type { Config } from "../config.js";
import type { Logger } from "../platform/logger.js";
import { CallAdmission } from "./call-admission.js";
import { fastBrotli, fastGzip } from "./compression.js";
import { CorsPolicy } from "./cors-policy.js";
import { isPeerGone, serverShutdownKey } from "./interceptors.js";
import { copyListeningSocket } from "./listen-copies.js";
import { guardRequest, streamParseErrors, undecodableQuery } from "./request-guard.js";

/** Connections the kernel may queue for the server to accept. */
const LISTEN_BACKLOG = 4096;
/**
 * Descriptors the server accepts on, each up to one connection per event-loop turn (see
 * listen-copies.ts). Many: a connection waiting in the kernel's queue gets no answer to its agent's
 * PING and is given up after 25 s, while one accepted waits in the server's own queues, answered.
 * The descriptors that find nothing to accept cost a failed accept() each, in turns with a
 * connection waiting.
 */
const ACCEPTING_DESCRIPTORS = 64;

type Request = http.IncomingMessage | http2.Http2ServerRequest;
type Response = http.ServerResponse | http2.Http2ServerResponse;
type Handler = (req: Request, res: Response) => void;

const H2_PREFACE = Buffer.from("PRI * HTTP/2.0");
const FIRST_BYTES_TIMEOUT_MS = 10_000;

/** What connect-es serves: the services, their interceptors, the largest request message, and other paths. */
export interface RpcRoutes {
  routes: (router: ConnectRouter) => void;
  interceptors: Interceptor[];
  readMaxBytes: number;
  fallback: Handler;
}

/** How the server speaks HTTP: the settings of the configuration that are about the transport. */
export type TransportConfig = Pick<
  Config,
  "maxStreamsPerConnection" | "maxActiveCallsPerConnection" | "http2" | "corsAllowedOrigins" | "keepaliveSeconds"
>;

/**
 * One port for everything: gRPC and Connect over HTTP/2, Connect and gRPC-Web over HTTP/1.1.
 * With TLS, ALPN picks the protocol. Without TLS, the first bytes decide: an HTTP/2 client opens
 * with the "PRI * HTTP/2.0" preface, which no HTTP/1 request starts with.
 */
export class RpcServer {
  private readonly h2: http2.Http2Server | http2.Http2SecureServer;
  private readonly h1?: http.Server;
  private readonly listener: net.Server;
  /** Servers on the other descriptors of the listener's socket; they hand each connection to it. */
  private readonly acceptors: net.Server[] = [];
  /** HTTP/2 sessions and the streams each has open. */
  private readonly sessions = new Map<http2.ServerHttp2Session, Set<http2.ServerHttp2Stream>>();
  /** Every TCP connection, whatever it turned out to speak; what is left at the deadline is cut. */
  private readonly connections = new Set<net.Socket>();
  /** HTTP/1.1 connections (TLS sockets under TLS). */
  private readonly sockets = new Set<Duplex>();
  /** HTTP/1 sockets with a request in flight; the others are idle and can be closed at once on shutdown. */
  private readonly busy = new Set<Duplex>();
  private closing = false;
  /** Aborted when the server stops: open streams end with UNAVAILABLE (see observe()). */
  private readonly shutdown = new AbortController();
  private readonly paths = new Map<string, UniversalHandler>();
  private readonly admission: CallAdmission;
  private readonly cors: CorsPolicy;

  constructor(
    private readonly rpc: RpcRoutes,
    private readonly options: { config: TransportConfig; logger: Logger; tls?: { cert: Buffer; key: Buffer } },
  ) {
    const { config, tls } = options;
    const router = createConnectRouter({
      interceptors: [streamParseErrors, ...rpc.interceptors],
      readMaxBytes: rpc.readMaxBytes,
      acceptCompression: [fastGzip, fastBrotli],
    });
    rpc.routes(router);
    for (const handler of router.handlers) this.paths.set(handler.requestPath, handler);
    this.admission = new CallAdmission(config.maxActiveCallsPerConnection);
    this.cors = new CorsPolicy(config.corsAllowedOrigins);
    const handler: Handler = (req, res) => this.handle(req, res);

    const h2Options: http2.ServerOptions = {
      settings: {
        maxConcurrentStreams: config.maxStreamsPerConnection,
        initialWindowSize: config.http2.streamWindowBytes,
        maxHeaderListSize: config.http2.maxHeaderListBytes,
      },
      maxSessionMemory: config.http2.maxSessionMemoryMb,
    };
    if (tls) {
      this.h2 = http2.createSecureServer({ ...tls, ...h2Options, allowHTTP1: true }, handler);
      this.listener = this.h2;
    } else {
      this.h2 = http2.createServer(h2Options, handler);
      this.h1 = http.createServer({ maxHeaderSize: config.http2.maxHeaderListBytes }, handler);
      // This server never listens itself (it is handed sockets); 'listening' is what starts Node's
      // enforcement of headersTimeout and requestTimeout, which slow clients must not escape.
      this.h1.emit("listening");
      this.listener = net.createServer((socket) => this.route(socket));
    }
    this.listener.on("connection", (socket: net.Socket) => {
      this.connections.add(socket);
      socket.once("close", () => this.connections.delete(socket));
    });
    const keepaliveMs = config.keepaliveSeconds * 1000;
    this.h2.on("session", (session: http2.ServerHttp2Session) => {
      const streams = new Set<http2.ServerHttp2Stream>();
      this.sessions.set(session, streams);
      session.once("close", () => this.sessions.delete(session));
      session.on("stream", (stream: http2.ServerHttp2Stream) => {
        streams.add(stream);
        stream.once("close", () => streams.delete(stream));
      });
      // The connection window is not a SETTINGS value: it is raised by a WINDOW_UPDATE once the session starts.
      session.setLocalWindowSize(config.http2.connectionWindowBytes);
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

  private handle(req: Request, res: Response): void {
    if (this.cors.handle(req, res)) return;
    const rpc = this.paths.get(req.url?.split("?", 1)[0] ?? "");
    if (rpc) void this.serve(rpc, req, res);
    else this.rpc.fallback(req, res);
  }

  /** One call: a place among its connection's calls, the request checked, connect-es's answer written. */
  private async serve(rpc: UniversalHandler, req: Request, res: Response): Promise<void> {
    const contextValues = createContextValues().set(serverShutdownKey, this.shutdown.signal);
    const request = universalRequestFromNodeRequest(req, res, undefined, contextValues);
    const h2stream = "stream" in req ? req.stream : undefined;
    let leave: (() => void) | undefined;
    try {
      leave = await this.admission.enter(h2stream?.session ?? req.socket, req.headers.authorization ?? "", request.signal);
      if (req.method === "GET") {
        const undecodable = undecodableQuery(request.url, rpc.method.input, this.rpc.readMaxBytes);
        if (undecodable) return answerConnectError(res, undecodable);
      }
      const guarded = await guardRequest(request, {
        input: rpc.method.input,
        streamingInput: rpc.method.methodKind === "client_streaming" || rpc.method.methodKind === "bidi_streaming",
        readMaxBytes: this.rpc.readMaxBytes,
        reset: h2stream && (() => h2stream.close(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM)),
      });
      const response = await rpc(guarded);
      leave();
      await universalResponseToNodeResponse(response, res);
      // A complete answer while the client still sends (it was refused): stop the rest of its
      // request without error, as RFC 9113 section 8.1 allows.
      if (h2stream && !h2stream.closed && !req.readableEnded) h2stream.close(http2.constants.NGHTTP2_NO_ERROR);
    } catch (err) {
      // The caller went away (a reset stream, a closed connection, "Premature close"): nothing to
      // answer and nothing wrong with the server.
      if (request.signal.aborted || res.destroyed || isPeerGone(err)) {
        this.options.logger.info({ rpc: `${rpc.service.typeName}/${rpc.method.name}`, reason: describe(err) }, "caller went away");
      } else {
        this.options.logger.error({ rpc: `${rpc.service.typeName}/${rpc.method.name}`, err }, "writing an answer failed");
      }
    } finally {
      leave?.();
    }
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

  async listen(port: number, host: string): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.listener.once("error", reject);
      // A fleet reconnecting at once (after a restart) opens thousands of connections within
      // seconds; with Node's default queue of 511 the kernel drops the excess SYNs and those agents
      // retry only after 1, 3, 7, 15... s. The kernel caps this at net.core.somaxconn.
      this.listener.listen({ port, host, backlog: LISTEN_BACKLOG }, () => {
        this.listener.off("error", reject);
        resolve();
      });
    });
    await this.acceptOnCopies();
    return (this.listener.address() as net.AddressInfo).port;
  }

  /**
   * Accepts on more descriptors of the listening socket, so that a busy event loop still takes in a
   * reconnecting fleet (about 40 ms at start). Without them it accepts on one, as before.
   */
  private async acceptOnCopies(): Promise<void> {
    const copies = await copyListeningSocket(this.listener, ACCEPTING_DESCRIPTORS - 1).catch((err: unknown) => {
      this.options.logger.warn({ err }, "accepting connections on one descriptor");
      return [];
    });
    for (const copy of copies) {
      if (this.closing) {
        copy.close();
        continue;
      }
      const acceptor = net.createServer((socket) => this.listener.emit("connection", socket));
      acceptor.on("error", (err) => this.listener.emit("error", err)); // as if the listener had accepted
      acceptor.listen(copy, LISTEN_BACKLOG);
      this.acceptors.push(acceptor);
    }
  }

  /**
   * Stops accepting connections and ends open streams at once with UNAVAILABLE (their callers
   * reconnect, to another replica); lets unary calls finish (HTTP/2 GOAWAY, idle HTTP/1 connections
   * closed) and, after `timeoutMs`, cuts whatever is left.
   */
  async close(timeoutMs: number): Promise<void> {
    this.closing = true;
    this.shutdown.abort(new ConnectError("the server is shutting down; call again", Code.Unavailable));
    const closed = Promise.all([this.listener, ...this.acceptors].map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    for (const session of this.sessions.keys()) session.close();
    await new Promise<void>((resolve) => {
      const deadline = Date.now() + timeoutMs;
      const poll = setInterval(() => {
        for (const socket of this.sockets) if (!this.busy.has(socket)) socket.destroy();
        // A stream whose answer went out in full while the client keeps its own side open (an
        // agent's, ended by the shutdown) waits for nothing more: reset without error (RFC 9113 8.1).
        for (const streams of this.sessions.values())
          for (const stream of streams) if (stream.state.localClose) stream.close(http2.constants.NGHTTP2_NO_ERROR);
        // A session closes once its last stream is done, ends its socket, and then waits for the client
        // to close its side, which a stalled client, or one that keeps idle connections, never does.
        // What was sent has left by then.
        for (const socket of this.connections) if (socket.writableFinished) socket.destroy();
        if (this.connections.size > 0 && Date.now() < deadline) return;
        clearInterval(poll);
        for (const socket of this.connections) socket.destroy();
        resolve();
      }, 20);
    });
    await closed;
  }
}

/** An answer the Connect protocol gives to a unary call it refuses (JSON, with the HTTP status of its code). */
function answerConnectError(res: Response, err: ConnectError): void {
  const body = JSON.stringify({ code: Code[err.code].replace(/(?<=[a-z])(?=[A-Z])/g, "_").toLowerCase(), message: err.rawMessage });
  res.writeHead(err.code === Code.InvalidArgument ? 400 : 500, { "content-type": "application/json" });
  res.end(body);
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
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
