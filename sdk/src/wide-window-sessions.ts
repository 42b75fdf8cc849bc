import type { ClientHttp2Stream, Http2Session } from "node:http2";
import { Http2SessionManager } from "@connectrpc/connect-node";

/** What the server may send on one stream before this client has read it. */
const STREAM_WINDOW_BYTES = 4 * 1024 * 1024;
/** The same for all streams of the connection together. */
const CONNECTION_WINDOW_BYTES = 16 * 1024 * 1024;

/**
 * connect-node's HTTP/2 connections with receive windows that let a download flow. Node's client
 * keeps HTTP/2's 64 KiB windows unless told otherwise: the server then stops after every 64 KiB
 * until this process has read them and answered with a WINDOW_UPDATE, and a file download crawls
 * at a fraction of the upload's speed (the server grants uploads 1 MiB per stream, 16 MiB per
 * connection). The windows only bound what may wait unread here: a caller that stops reading
 * still holds at most 16 MiB per connection.
 */
export class WideWindowSessions extends Http2SessionManager {
  private readonly widened = new WeakSet<Http2Session>();

  constructor(baseUrl: string, ping?: ConstructorParameters<typeof Http2SessionManager>[1]) {
    super(baseUrl, ping, { settings: { initialWindowSize: STREAM_WINDOW_BYTES } });
  }

  override async request(...args: Parameters<Http2SessionManager["request"]>): Promise<ClientHttp2Stream> {
    const stream = await super.request(...args);
    // The connection's window is not a SETTINGS value: a WINDOW_UPDATE raises it once the connection
    // is up, and this is the first moment this class sees a (possibly new) connection.
    const session = stream.session;
    if (session && !this.widened.has(session)) {
      this.widened.add(session);
      session.setLocalWindowSize(CONNECTION_WINDOW_BYTES);
    }
    return stream;
  }
}
