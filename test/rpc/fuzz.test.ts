import { strict as assert } from "node:assert";
import { randomUUID } from "node:crypto";
import { create, ScalarType, type DescField, type DescMessage, type DescMethod, type DescService } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { EnvironmentService } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { Channel } from "../../src/platform/channel.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

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
