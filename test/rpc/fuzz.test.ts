import { strict as assert } from "node:assert";
import { randomUUID } from "node:crypto";
import http2 from "node:http2";
import { create, ScalarType, type DescField, type DescMessage, type DescMethod, type DescService } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { EnvironmentService } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { Channel } from "../../src/platform/channel.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";
import { envelope } from "../support/grpc-envelope.js";

/** A small seeded generator, so a failure can be replayed with FUZZ_SEED. */
function rng(seed: number) {
  let s = seed >>> 0 || 1;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const SEED = Number(process.env.FUZZ_SEED ?? Date.now() % 1_000_000);
const ROUNDS = Number(process.env.FUZZ_ROUNDS ?? 10);

/** Values chosen to hit edges: empty, huge, control characters, paths, wrong or right-looking ids. */
function strings(known: string[]): string[] {
  return [
    "",
    " ",
    "x".repeat(300),
    "y".repeat(70_000),
    "a\u0000b",
    "../../etc/passwd",
    "/abs",
    "ÿ😀",
    "%_\\",
    "not-a-uuid",
    randomUUID(),
    "rgpu_0000000000000000_x",
    ...known,
  ];
}

function value(field: DescField, r: () => number, known: string[], depth: number): unknown {
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)]!;
  switch (field.fieldKind) {
    case "scalar":
      return scalar(field.scalar, r, known);
    case "enum":
      return pick([0, 1, 2, 3, -1, 99, 2 ** 31 - 1]);
    case "message":
      return depth > 3 ? undefined : message(field.message, r, known, depth + 1);
    case "list": {
      const n = pick([0, 1, 3, 70]);
      return Array.from({ length: n }, () =>
        field.listKind === "scalar"
          ? scalar(field.scalar, r, known)
          : field.listKind === "enum"
            ? pick([0, 1, 99])
            : depth > 3
              ? undefined
              : message(field.message, r, known, depth + 1),
      ).filter((v) => v !== undefined);
    }
    case "map": {
      const out: Record<string, unknown> = {};
      for (let i = 0; i < pick([0, 1, 2, 80]); i++) {
        out[pick(strings(known)).slice(0, 300) + (i > 0 ? String(i) : "")] =
          field.mapKind === "scalar"
            ? scalar(field.scalar, r, known)
            : field.mapKind === "enum"
              ? 1
              : depth > 3
                ? undefined
                : message(field.message, r, known, depth + 1);
      }
      return out;
    }
  }
}

function scalar(t: ScalarType, r: () => number, known: string[]): unknown {
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)]!;
  switch (t) {
    case ScalarType.STRING:
      return pick(strings(known));
    case ScalarType.BOOL:
      return r() < 0.5;
    case ScalarType.BYTES:
      return new Uint8Array(pick([0, 1, 1000]));
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return pick([0n, -1n, 1n, 2n ** 63n - 1n, -(2n ** 63n), 10n ** 12n]);
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return pick([0n, 1n, 2n ** 64n - 1n]);
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return pick([0, -1, 1e308, Number.NaN, Number.POSITIVE_INFINITY, 0.5]);
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return pick([0, 1, 2 ** 32 - 1]);
    default:
      return pick([0, -1, 1, 2 ** 31 - 1, -(2 ** 31), 65536]);
  }
}

function message(desc: DescMessage, r: () => number, known: string[], depth = 0): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const field of desc.fields) {
    if (r() < 0.3) continue; // leave some fields unset
    const v = value(field, r, known, depth);
    if (v === undefined) continue;
    if (field.oneof) out[field.oneof.localName] = { case: field.localName, value: v };
    else out[field.localName] = v;
  }
  return out;
}

// Codes a well-behaved server may answer to garbage. INTERNAL and UNKNOWN are bugs.
const ACCEPTABLE = new Set([
  Code.InvalidArgument,
  Code.NotFound,
  Code.ResourceExhausted,
  Code.FailedPrecondition,
  Code.AlreadyExists,
  Code.PermissionDenied,
  Code.Aborted,
  Code.OutOfRange,
  Code.Canceled,
  Code.DeadlineExceeded,
]);

describe(`fuzz: every RPC with random and boundary messages (FUZZ_SEED=${SEED})`, function () {
  this.timeout(300_000);
  let server: TestServer;
  const known: string[] = [];

  before(async () => {
    server = await startTestServer();
    // Some real ids, so that a fraction of the calls reach past "not found".
    const host = await server.client(HostService).createHost({ name: "fuzz-host", address: "10.9.0.1" });
    const ws = await server.client(WorkspaceService).createWorkspace({ name: "fuzz-team" });
    known.push(host.host!.id, ws.workspace!.id, "fuzz-team", "NVIDIA H100 80GB HBM3");
  });
  after(() => server.close());

  for (const service of [HostService, GpuService, WorkspaceService, EnvironmentService] as DescService[]) {
    it(`${service.name}: never INTERNAL, never stuck`, async () => {
      const r = rng(SEED + service.name.length);
      const client = server.client(service, { token: ADMIN_TOKEN, protocol: "grpc" }) as unknown as Record<
        string,
        (...a: unknown[]) => unknown
      >;
      const problems: string[] = [];
      for (let round = 0; round < ROUNDS; round++) {
        for (const method of service.methods) {
          const req = create(method.input, message(method.input, r, known) as never);
          const code = await call(client, method, req, r, known);
          if (code !== undefined && !ACCEPTABLE.has(code))
            problems.push(
              `${method.name}: ${Code[code]} for ${JSON.stringify(req, (_, v) => (typeof v === "bigint" ? String(v) : typeof v === "string" && v.length > 60 ? `${v.slice(0, 20)}…(${v.length})` : v)).slice(0, 400)}`,
            );
        }
      }
      assert.deepEqual(problems.slice(0, 10), [], `${problems.length} bad answers (replay with FUZZ_SEED=${SEED})`);
      // Still answering.
      await server.client(HostService).listHosts({});
    });
  }

  it("answers undecodable binary messages with INVALID_ARGUMENT on every method, over Connect, gRPC and gRPC-Web, with or without a token", async () => {
    const session = http2.connect(server.baseUrl);
    session.on("error", () => undefined);
    const problems: string[] = [];
    let calls = 0;
    try {
      for (const service of [HostService, GpuService, WorkspaceService, EnvironmentService] as DescService[]) {
        for (const method of service.methods) {
          for (const [name, bytes] of malformed(method.input)) {
            for (const protocol of ["connect", "grpc", "grpc-web"] as const) {
              // Client and bidi streams need HTTP/2, which gRPC-Web (from browsers) does not have.
              if (protocol === "grpc-web" && method.methodKind !== "unary" && method.methodKind !== "server_streaming") continue;
              for (const token of [ADMIN_TOKEN, null]) {
                calls++;
                const got = await sendRaw(session, server.baseUrl, method, protocol, bytes, token);
                const streamsIn = method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming";
                // A stream's messages are read after the caller is known; a unary or server-stream message comes first.
                const allowed = streamsIn ? ["invalid_argument", "unauthenticated", "permission_denied"] : ["invalid_argument"];
                if (!allowed.includes(got))
                  problems.push(`${service.name}/${method.name} ${protocol} ${name} ${token ? "token" : "no token"}: ${got}`);
              }
            }
          }
        }
      }
    } finally {
      session.close();
    }
    assert.ok(calls > 500, `only ${calls} calls`);
    assert.deepEqual(problems.slice(0, 40), [], `${problems.length} of ${calls} answers wrong`);
    await server.client(HostService).listHosts({});
  });

  it("answers malformed Connect JSON with INVALID_ARGUMENT, not INTERNAL", async () => {
    for (const body of ["{", "[]", '{"name": 5}', '{"pageSize": "many"}', '{"id": {"$ne": 1}}', "\u0000", '{"labels": {"a": 1}}']) {
      const res = await fetch(`${server.baseUrl}/remotegpu.v1.HostService/CreateHost`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN_TOKEN}` },
        body,
      });
      const json = (await res.json()) as { code?: string };
      assert.equal(json.code, "invalid_argument", `${body} → ${res.status} ${JSON.stringify(json)}`);
    }
  });
});

/** One call; the code it ended with (undefined for OK). Streams are judged by their first message. */
async function call(
  client: Record<string, (...a: unknown[]) => unknown>,
  m: DescMethod,
  req: unknown,
  r: () => number,
  known: string[],
): Promise<Code | undefined> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 3000);
  try {
    const fn = client[m.localName]!.bind(client);
    if (m.methodKind === "unary") {
      await fn(req, { signal: abort.signal });
    } else if (m.methodKind === "client_streaming" || m.methodKind === "bidi_streaming") {
      const requests = new Channel<unknown>();
      for (let i = 0; i < 3; i++) requests.push(create(m.input, message(m.input, r, known) as never));
      requests.close();
      const res = fn(requests, { signal: abort.signal });
      if (m.methodKind === "client_streaming") await res;
      else for await (const _ of res as AsyncIterable<unknown>) break;
    } else {
      for await (const _ of fn(req, { signal: abort.signal }) as AsyncIterable<unknown>) break;
    }
    return undefined;
  } catch (err) {
    const e = ConnectError.from(err);
    // Our own abort: a stream that stayed open quietly, which is fine (watches wait for changes).
    if (abort.signal.aborted && e.code === Code.Canceled) return undefined;
    return e.code;
  } finally {
    clearTimeout(timer);
    abort.abort();
  }
}

/** Binary messages that no decoder may accept, each named. */
function malformed(input: DescMessage): [string, Uint8Array][] {
  const cases: [string, Uint8Array][] = [
    // Field 1 says 32 bytes follow; 2 do.
    ["truncated", Uint8Array.of(0x0a, 0x20, 0x61, 0x62)],
    // Wire types 6 and 7 do not exist; 4 ends a group that never began.
    ["wire type 7", Uint8Array.of(0x0f, 0x00)],
    ["wire type 6", Uint8Array.of(0x0e, 0x00)],
    ["stray end group", Uint8Array.of(0x0c)],
    ["field number 0", Uint8Array.of(0x00, 0x01)],
  ];
  // An 11-byte varint (more than 64 bits) in field 1. A request without a field 1 (GetCallerRequest)
  // is left out: protobuf-es skips an unknown varint without counting its bytes.
  if (input.fields.some((f) => f.number === 1)) {
    cases.push(["varint overflow", Uint8Array.of(0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)]);
  }
  const text = input.fields.find((f) => f.fieldKind === "scalar" && f.scalar === ScalarType.STRING);
  // A string field holding bytes that are not UTF-8.
  if (text) cases.push(["bad UTF-8", Uint8Array.of(...varint((text.number << 3) | 2), 2, 0xff, 0xfe)]);
  return cases;
}

function varint(n: number): number[] {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return out;
}

const CODE_NAMES: Record<string, string> = {
  "3": "invalid_argument",
  "7": "permission_denied",
  "13": "internal",
  "16": "unauthenticated",
};

/** Sends `bytes` as the request message of `method` the way a client of `protocol` would; the code it got, by name. */
async function sendRaw(
  session: http2.ClientHttp2Session,
  baseUrl: string,
  method: DescMethod,
  protocol: "connect" | "grpc" | "grpc-web",
  bytes: Uint8Array,
  token: string | null,
): Promise<string> {
  const path = `/${method.parent.typeName}/${method.name}`;
  const auth: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const streaming = method.methodKind !== "unary";
  if (protocol === "grpc-web") {
    // Over HTTP/1.1, as browsers send it; the status comes in the trailer frame at the end of the body.
    const res = await fetch(`${baseUrl}${path}`, {
      method: "POST",
      headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1", ...auth },
      body: envelope(bytes),
      signal: AbortSignal.timeout(5000),
    });
    const body = Buffer.from(await res.arrayBuffer()).toString("latin1");
    const status = res.headers.get("grpc-status") ?? /grpc-status:\s*(\d+)/.exec(body)?.[1] ?? `http ${res.status}`;
    return CODE_NAMES[status] ?? `grpc-status ${status}`;
  }
  const headers =
    protocol === "grpc"
      ? { "content-type": "application/grpc", te: "trailers" }
      : streaming
        ? { "content-type": "application/connect+proto", "connect-protocol-version": "1" }
        : { "content-type": "application/proto", "connect-protocol-version": "1" };
  const stream = session.request({ ":method": "POST", ":path": path, ...headers, ...auth });
  stream.end(protocol === "connect" && !streaming ? bytes : envelope(bytes));
  return new Promise((resolve) => {
    let status = "";
    let trailer = "";
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      stream.close(http2.constants.NGHTTP2_CANCEL);
      resolve("no answer within 5 s");
    }, 5000);
    stream.on("response", (h) => {
      status = String(h[":status"]);
      trailer = String(h["grpc-status"] ?? "");
    });
    stream.on("trailers", (t) => (trailer = String(t["grpc-status"] ?? trailer)));
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("error", () => undefined);
    stream.on("close", () => {
      clearTimeout(timer);
      const body = Buffer.concat(chunks);
      if (protocol === "grpc") return resolve(CODE_NAMES[trailer] ?? `grpc-status ${trailer || "none"}`);
      // Connect: a unary error is JSON with the HTTP status; a stream's is the end-of-stream frame.
      const json = streaming ? body.subarray(body.lastIndexOf(0x02) + 5) : body;
      try {
        const parsed = JSON.parse(json.toString()) as { code?: string; error?: { code?: string } };
        resolve(parsed.code ?? parsed.error?.code ?? `http ${status}`);
      } catch {
        resolve(`http ${status}: ${body.toString().slice(0, 80)}`);
      }
    });
  });
}
