// What the server checks of a request body before connect-es reads it. connect-es 2.1 reports a
// binary message it cannot decode as INTERNAL (its serializer is shared with clients, where an
// undecodable answer is the server's fault), and answers an oversized message before the client
// has sent it all; a connect-node client still holding the rest then breaks its whole connection
// (its own HTTP/2 session memory is full when the answer arrives). Both are settled here, where the
// bytes pass by: the single request message of a unary or server-streaming call is decoded here
// once to be judged; the messages of a client or bidi stream (an agent's heartbeats: thousands a
// second) are not decoded twice, connect-es's verdict on them is corrected as they are read
// (streamParseErrors).
import { brotliDecompressSync, gunzipSync } from "node:zlib";
import { fromBinary, type DescMessage } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { UniversalServerRequest } from "@connectrpc/connect/protocol";

/** How the body of a request is laid out, by its content type. */
export type Framing = "whole" | "enveloped";

/** The request bytes one refused message may make the server read and throw away. */
export const MAX_DISCARD_BYTES = 64 * 1024 * 1024;
/** How long the server waits for the rest of a refused message before it resets the stream. */
const MAX_DISCARD_MS = 10_000;

const ENVELOPE_COMPRESSED = 0x01;
const ENVELOPE_END_STREAM = 0x02;

export interface GuardOptions {
  /** The request message type: binary messages are decoded once here to be judged... */
  input: DescMessage;
  /** ...unless the call streams its requests: streamParseErrors corrects those as they are read. */
  streamingInput: boolean;
  readMaxBytes: number;
  /**
   * Ends the HTTP/2 stream at once (RST_STREAM ENHANCE_YOUR_CALM, which clients read as
   * RESOURCE_EXHAUSTED); undefined on HTTP/1.1, where Node discards an unread body itself.
   */
  reset?: () => void;
}

/**
 * The request with a body that (1) throws INVALID_ARGUMENT, through connect-es's own error paths, at
 * a binary message that does not decode, and (2) on HTTP/2 reads and discards the rest of an
 * oversized message before connect-es refuses it, so the client's queue drains before the answer
 * comes (at most MAX_DISCARD_BYTES; beyond, the stream is reset).
 */
export async function guardRequest(req: UniversalServerRequest, options: GuardOptions): Promise<UniversalServerRequest> {
  const contentType = req.header.get("content-type") ?? "";
  const framing = framingOf(contentType);
  if (!framing || !isByteStream(req.body)) return req;
  const binary = !/json/i.test(contentType);
  const encoding = (
    framing === "whole"
      ? req.header.get("content-encoding")
      : (req.header.get("grpc-encoding") ?? req.header.get("connect-content-encoding"))
  )?.toLowerCase();
  const source = new Bytes(req.body);
  const declared = Number(req.header.get("content-length") ?? Number.NaN);
  if (framing === "whole" && declared > options.readMaxBytes) {
    // connect-es refuses by the header alone, without reading: the rest must go first.
    await source.discard(declared, options.reset); // nothing is buffered yet
    return { ...req, body: empty() };
  }
  const check =
    binary && !options.streamingInput
      ? (bytes: Uint8Array, compressed: boolean) => decodes(options.input, bytes, compressed, encoding, options.readMaxBytes)
      : undefined;
  const body =
    framing === "whole" ? wholeBody(source, options, check) : check ? envelopedBody(source, options, check) : streamedBody(source, options);
  return { ...req, body };
}

/** The framing of a content type connect-es serves; undefined for anything else (it answers those itself). */
export function framingOf(contentType: string): Framing | undefined {
  if (/^application\/(proto|json)(;|$)/i.test(contentType)) return "whole";
  if (/^application\/grpc-web-text/i.test(contentType)) return undefined; // base64: connect-es refuses it
  if (/^application\/(grpc|grpc-web|connect\+)/i.test(contentType)) return "enveloped";
  return undefined;
}

async function* wholeBody(source: Bytes, options: GuardOptions, check?: Checker): AsyncIterable<Uint8Array> {
  while (await source.fill(source.length + 1)) {
    if (source.length > options.readMaxBytes) {
      // Too large, and the size was not announced: take in the rest, then let connect-es refuse it.
      await source.discard(Number.POSITIVE_INFINITY, options.reset);
      yield source.take(source.length);
      return;
    }
  }
  const all = source.take(source.length);
  check?.(all, false);
  yield all;
}

async function* envelopedBody(source: Bytes, options: GuardOptions, check?: Checker): AsyncIterable<Uint8Array> {
  while (await source.fill(5)) {
    const header = source.peek(5);
    const flags = header[0]!;
    const length = new DataView(header.buffer, header.byteOffset, 5).getUint32(1);
    if (length > options.readMaxBytes) {
      source.take(5);
      const unread = length - source.take(source.length).byteLength;
      await source.discard(unread, options.reset);
      yield header; // connect-es reads the size and refuses the message
      return;
    }
    if (!(await source.fill(5 + length))) break; // cut short: connect-es reports the incomplete envelope
    const frame = source.take(5 + length);
    if (!(flags & ENVELOPE_END_STREAM)) check?.(frame.subarray(5), (flags & ENVELOPE_COMPRESSED) !== 0);
    yield frame;
  }
  if (source.length > 0) yield source.take(source.length);
}

/**
 * The body of a client or bidi stream (or a binary-less one), chunk by chunk as it arrives: only the
 * envelope headers are looked at, across chunks, so messages pass on neither copied nor re-cut (an
 * agent's heartbeats: thousands a second). An oversized message is handled as envelopedBody does.
 */
function streamedBody(source: Bytes, options: GuardOptions): AsyncIterable<Uint8Array> {
  const header = new Uint8Array(5);
  const view = new DataView(header.buffer);
  let gathered = 0; // bytes of the next envelope's header seen so far
  let left = 0; // bytes of the current envelope still to come
  let ended = false;
  const next = async (): Promise<IteratorResult<Uint8Array>> => {
    const chunk = ended ? undefined : await source.next();
    if (!chunk) {
      ended = true;
      return { done: true, value: undefined };
    }
    for (let i = 0; i < chunk.byteLength; ) {
      if (left > 0) {
        const n = Math.min(left, chunk.byteLength - i);
        left -= n;
        i += n;
        continue;
      }
      header[gathered++] = chunk[i++]!;
      if (gathered < 5) continue;
      gathered = 0;
      left = view.getUint32(1);
      if (left > options.readMaxBytes) {
        // The messages before it and its header go on, once the rest of it is read and dropped:
        // connect-es refuses it by the header, and the client has finished sending by then.
        ended = true;
        await source.discard(left - (chunk.byteLength - i), options.reset);
        return { done: false, value: chunk.subarray(0, i) };
      }
    }
    return { done: false, value: chunk };
  };
  return { [Symbol.asyncIterator]: () => ({ next }) };
}

type Checker = (bytes: Uint8Array, compressed: boolean) => void;

/**
 * Turns connect-es's INTERNAL "parse binary" for a streamed request message into the
 * INVALID_ARGUMENT that decodes() gives a single one: the stream ends with the client's fault.
 */
export const streamParseErrors: Interceptor = (next) => (req) => {
  if (!req.stream || req.method.methodKind === "server_streaming") return next(req);
  const input = req.method.input;
  const source = req.message;
  const corrected = (err: unknown): never => {
    if (err instanceof ConnectError && err.code === Code.Internal && err.rawMessage.startsWith(PARSE_BINARY)) {
      throw new ConnectError(
        `the request is not a valid ${input.typeName}: ${err.rawMessage.slice(PARSE_BINARY.length)}`,
        Code.InvalidArgument,
      );
    }
    throw err;
  };
  // A plain iterator rather than a generator: one promise per message, on the agents' hot path.
  const message: typeof source = {
    [Symbol.asyncIterator]() {
      const it = source[Symbol.asyncIterator]();
      return {
        next: () => it.next().then(undefined, corrected),
        return: (value?: unknown) => it.return?.(value) ?? Promise.resolve({ done: true as const, value: undefined }),
      };
    },
  };
  return next({ ...req, message });
};

/** How connect-es 2 begins the message of an undecodable binary message (protocol/serialization.js). */
const PARSE_BINARY = "parse binary: ";

/** Throws INVALID_ARGUMENT when `bytes` is not a binary `input`; a compression it cannot undo is left to connect-es. */
function decodes(input: DescMessage, bytes: Uint8Array, compressed: boolean, encoding: string | undefined, maxDecompressed: number): void {
  let plain = bytes;
  if (compressed || (encoding && encoding !== "identity")) {
    try {
      // Bounded: a small bomb must not become gigabytes before anyone is authenticated.
      if (encoding === "gzip") plain = gunzipSync(bytes, { maxOutputLength: maxDecompressed });
      else if (encoding === "br") plain = brotliDecompressSync(bytes, { maxOutputLength: maxDecompressed });
      else return;
    } catch {
      return;
    }
  }
  try {
    fromBinary(input, plain);
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new ConnectError(`the request is not a valid ${input.typeName}: ${why}`, Code.InvalidArgument);
  }
}

/** A Connect GET carries its message in the query; true when that message is binary and does not decode. */
export function undecodableQuery(url: string, input: DescMessage, readMaxBytes = 8 * 2 ** 20): ConnectError | undefined {
  const query = new URL(url).searchParams;
  if (query.get("encoding") !== "proto") return undefined;
  const message = query.get("message") ?? "";
  const bytes = query.get("base64") === "1" ? Buffer.from(message, "base64url") : new TextEncoder().encode(message);
  try {
    decodes(input, bytes, false, query.get("compression") ?? undefined, readMaxBytes);
    return undefined;
  } catch (err) {
    return err as ConnectError;
  }
}

function isByteStream(body: UniversalServerRequest["body"]): body is AsyncIterable<Uint8Array> {
  return typeof body === "object" && body !== null && Symbol.asyncIterator in body;
}

async function* empty(): AsyncIterable<Uint8Array> {}

/** The body's bytes as they arrive, buffered without copying until a frame is taken. */
class Bytes {
  private readonly chunks: Uint8Array[] = [];
  length = 0;
  private readonly it: AsyncIterator<Uint8Array>;
  private ended = false;

  constructor(body: AsyncIterable<Uint8Array>) {
    this.it = body[Symbol.asyncIterator]();
  }

  /** Reads until `n` bytes are buffered; false when the body ended first. */
  async fill(n: number): Promise<boolean> {
    while (this.length < n) {
      if (this.ended) return false;
      const next = await this.it.next();
      if (next.done) {
        this.ended = true;
        return false;
      }
      this.chunks.push(next.value);
      this.length += next.value.byteLength;
    }
    return true;
  }

  /** The next piece of the body: what is buffered first; undefined at its end. */
  async next(): Promise<Uint8Array | undefined> {
    if (this.length > 0) return this.take(this.length);
    if (this.ended) return undefined;
    const next = await this.it.next();
    if (!next.done) return next.value;
    this.ended = true;
    return undefined;
  }

  peek(n: number): Uint8Array {
    const all = this.take(this.length);
    this.chunks.push(all);
    this.length = all.byteLength;
    return all.subarray(0, n);
  }

  take(n: number): Uint8Array {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks.length = 0;
    this.length = 0;
    if (all.byteLength > n) {
      this.chunks.push(all.subarray(n));
      this.length = all.byteLength - n;
    }
    return all.subarray(0, n);
  }

  /**
   * Reads and drops up to `n` more bytes beyond those buffered, so that a client can finish sending;
   * resets the stream (when it can) rather than take more than MAX_DISCARD_BYTES or wait longer
   * than MAX_DISCARD_MS.
   */
  async discard(n: number, reset: (() => void) | undefined): Promise<void> {
    if (!reset) return;
    if (n > MAX_DISCARD_BYTES && Number.isFinite(n)) return reset();
    let left = n;
    const deadline = Date.now() + MAX_DISCARD_MS;
    let dropped = 0;
    while (left > 0 && !this.ended) {
      // A client that announced more and then went quiet is not waited on past the deadline.
      const pending = this.it.next();
      pending.catch(() => undefined);
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), Math.max(0, deadline - Date.now()))));
      const next = await Promise.race([pending, late]);
      clearTimeout(timer);
      if (next === "late") return reset();
      if (next.done) {
        this.ended = true;
        break;
      }
      left -= next.value.byteLength;
      dropped += next.value.byteLength;
      if (dropped > MAX_DISCARD_BYTES || Date.now() > deadline) return reset();
    }
  }
}
