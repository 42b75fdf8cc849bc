import { strict as assert } from "node:assert";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { EnvironmentService } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { ApiTokenRole, FileUrlMethod, WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { Channel } from "../../src/platform/channel.js";
import { ManualClock } from "../../src/platform/clock.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

/**
 * The authorization policy as a table: every RPC of the four application services, called with every
 * kind of token, must get the code the policy (not the implementation) says. Expectations are
 * derived from the rules below, never read from src/rpc/access.ts.
 */

/** connect-es has no Code.OK; 0 stands for success. */
const OK = 0;
type Outcome = Code | typeof OK;
const codeName = (c: Outcome) => (c === OK ? "OK" : Code[c]);
const GiB = 1n << 30n;
const NO_SUCH_ENV = "00000000-0000-4000-8000-00000000e0e0";

const KINDS = [
  "cluster admin",
  "A admin",
  "A member",
  "A viewer",
  "B member",
  "host agent",
  "A revoked",
  "A expired",
  "garbage token",
  "no token",
] as const;
type Kind = (typeof KINDS)[number];
const UNAUTHENTICATED_KINDS: Kind[] = ["A revoked", "A expired", "garbage token", "no token"];
const ROLE_RANK: Partial<Record<Kind, number>> = { "A viewer": 1, "A member": 2, "B member": 2, "A admin": 3 };

/** Who may call an RPC: cluster admin only, cluster admin or the host's own agent, or a workspace role or better. */
type Need = "cluster" | "host" | "viewer" | "member" | "ws-admin";
const NEED_RANK = { viewer: 1, member: 2, "ws-admin": 3 } as const;

interface Fixtures {
  a: string; // workspace A
  b: string; // workspace B
  host: string; // the host whose agent token is the "host agent" kind; no GPUs, so its hellos change nothing
  gpuHost: string; // an ONLINE host holding the GPUs below
  gpu: string;
  env: string; // an environment of workspace A
  fresh: {
    env(): Promise<string>;
    workspace(): Promise<string>;
    host(): Promise<string>;
    gpu(): Promise<string>;
    allocatedGpu(): Promise<string>;
    token(): Promise<string>;
  };
  n(): number; // a counter for unique names
}

interface Rule {
  need: Need;
  /** "workspace": the request names workspace A; "object": it names an object of workspace A by id. */
  scope?: "workspace" | "object";
  /** The code an allowed caller gets (default OK). */
  allowed?: Outcome;
  /** A server stream that may stay quiet for an allowed caller (otherwise its first message must come). */
  quiet?: true;
  /** The request, built per call so that mutations by allowed callers leave the fixtures alone. */
  req(fx: Fixtures, kind: Kind): unknown;
}

/** The policy: the code `kind` must get from an RPC governed by `rule`. */
function expected(rule: Rule, kind: Kind): Outcome {
  const allowed = rule.allowed ?? OK;
  if (UNAUTHENTICATED_KINDS.includes(kind)) return Code.Unauthenticated;
  if (kind === "cluster admin") return allowed;
  if (kind === "host agent") return rule.need === "host" ? allowed : Code.PermissionDenied;
  if (rule.need === "cluster" || rule.need === "host") return Code.PermissionDenied;
  if (ROLE_RANK[kind]! < NEED_RANK[rule.need]) return Code.PermissionDenied;
  if (kind === "B member" && rule.scope === "workspace") return Code.PermissionDenied;
  // An object of another workspace does not exist for the caller, once there is a handler to look it up.
  if (kind === "B member" && rule.scope === "object") return Code.NotFound;
  return allowed;
}

const hostRules: Record<string, Rule> = {
  CreateHost: { need: "cluster", req: (fx) => ({ name: `authz-host-${fx.n()}`, address: "10.20.0.1" }) },
  GetHost: { need: "cluster", req: (fx) => ({ id: fx.host }) },
  ListHosts: { need: "cluster", req: () => ({}) },
  UpdateHost: { need: "cluster", req: (fx) => ({ host: { id: fx.host, labels: { touched: "yes" } }, updateMask: { paths: ["labels"] } }) },
  DeleteHost: { need: "cluster", req: async (fx) => ({ id: await fx.fresh.host() }) },
  CordonHost: { need: "cluster", req: (fx) => ({ id: fx.host }) },
  UncordonHost: { need: "cluster", req: (fx) => ({ id: fx.host }) },
  DrainHost: { need: "cluster", req: async (fx) => ({ id: await fx.fresh.host() }) },
  RotateHostToken: { need: "cluster", req: async (fx) => ({ hostId: await fx.fresh.host() }) },
  Heartbeat: { need: "host", req: (fx) => ({ hostId: fx.host, agentVersion: "authz" }) },
  // No tunnel has this id: an allowed caller is told so.
  AcceptSshTunnel: { need: "host", allowed: Code.NotFound, req: () => ({ tunnelId: "00000000-0000-4000-8000-0000000055a1" }) },
  // Allowed callers get a welcome to their hello.
  StreamHeartbeats: {
    need: "host",
    req: (fx) => ({ message: { case: "hello", value: { hostId: fx.host, agentVersion: "authz", gpus: [] } } }),
  },
  // Allowed callers get the INITIAL event of the host.
  WatchHosts: { need: "cluster", req: (fx) => ({ hostId: fx.host }) },
};

const gpuRules: Record<string, Rule> = {
  CreateGpu: {
    need: "cluster",
    req: (fx) => ({ hostId: fx.gpuHost, index: 100 + fx.n(), uuid: `GPU-authz-${fx.n()}`, model: "NVIDIA L4", memoryBytes: 24n * GiB }),
  },
  GetGpu: { need: "cluster", req: (fx) => ({ id: fx.gpu }) },
  ListGpus: { need: "cluster", req: () => ({}) },
  UpdateGpu: { need: "cluster", req: (fx) => ({ gpu: { id: fx.gpu, model: "NVIDIA L4" }, updateMask: { paths: ["model"] } }) },
  DeleteGpu: { need: "cluster", req: async (fx) => ({ id: await fx.fresh.gpu() }) },
  AllocateGpu: { need: "cluster", req: async (fx) => ({ gpuId: await fx.fresh.gpu(), holder: "authz" }) },
  ReleaseGpu: { need: "cluster", req: async (fx) => ({ gpuId: await fx.fresh.allocatedGpu() }) },
  GetGpuTelemetry: { need: "cluster", req: (fx) => ({ gpuId: fx.gpu }) },
  // Allowed callers see an open, quiet stream (no samples are flowing).
  WatchGpuTelemetry: { need: "cluster", quiet: true, req: (fx) => ({ gpuId: fx.gpu }) },
};

const ws = "workspace" as const;
const workspaceRules: Record<string, Rule> = {
  CreateWorkspace: { need: "cluster", req: (fx) => ({ name: `authz-ws-${fx.n()}`, displayName: "Authz", labels: { t: "authz" } }) },
  GetWorkspace: { need: "viewer", scope: ws, req: (fx) => ({ id: fx.a }) },
  ListWorkspaces: { need: "viewer", req: () => ({}) },
  UpdateWorkspace: {
    need: "ws-admin",
    scope: ws,
    req: (fx) => ({ workspace: { id: fx.a, displayName: "Workspace A" }, updateMask: { paths: ["display_name"] } }),
  },
  // Workspace tokens try to delete their own workspace; the cluster admin deletes a fresh one.
  DeleteWorkspace: {
    need: "cluster",
    scope: ws,
    req: async (fx, kind) => ({ id: kind === "cluster admin" ? await fx.fresh.workspace() : fx.a }),
  },
  GetResourceQuota: { need: "viewer", scope: ws, req: (fx) => ({ workspaceId: fx.a }) },
  SetResourceQuota: { need: "cluster", scope: ws, req: (fx) => ({ quota: { workspaceId: fx.a } }) },
  GetUsage: { need: "viewer", scope: ws, req: (fx) => ({ workspaceId: fx.a }) },
  CreateApiToken: {
    need: "ws-admin",
    scope: ws,
    req: (fx) => ({ workspaceId: fx.a, name: `authz-token-${fx.n()}`, role: ApiTokenRole.VIEWER }),
  },
  ListApiTokens: { need: "ws-admin", scope: ws, req: (fx) => ({ workspaceId: fx.a }) },
  RevokeApiToken: { need: "ws-admin", scope: ws, req: async (fx) => ({ workspaceId: fx.a, tokenId: await fx.fresh.token() }) },
  CreateAdminToken: { need: "cluster", req: (fx) => ({ name: `authz-admin-${fx.n()}` }) },
  ListAdminTokens: { need: "cluster", req: () => ({}) },
  RevokeAdminToken: { need: "cluster", allowed: Code.NotFound, req: () => ({ tokenId: "0123456789abcdef" }) },
  UploadFile: {
    need: "member",
    scope: ws,
    req: (fx) => [
      { part: { case: "header", value: { workspaceId: fx.a, path: `authz/${fx.n()}.txt` } } },
      { part: { case: "chunk", value: new Uint8Array([1, 2, 3]) } },
    ],
  },
  // Reads of a file that is not there: the policy lets the call through, then it is NOT_FOUND.
  DownloadFile: { need: "viewer", scope: ws, allowed: Code.NotFound, req: (fx) => ({ workspaceId: fx.a, path: "authz/none.txt" }) },
  ListFiles: { need: "viewer", scope: ws, req: (fx) => ({ workspaceId: fx.a }) },
  DeleteFile: { need: "member", scope: ws, allowed: Code.NotFound, req: (fx) => ({ workspaceId: fx.a, path: "authz/none.txt" }) },
  GetFileUrl: {
    need: "viewer",
    scope: ws,
    allowed: Code.NotFound,
    req: (fx) => ({ workspaceId: fx.a, path: "authz/none.txt", method: FileUrlMethod.GET }),
  },
  ListAuditEvents: { need: "ws-admin", scope: ws, req: (fx) => ({ workspaceId: fx.a }) },
  GetCaller: { need: "viewer", req: () => ({}) },
};

// Environments of workspace A: a shared one for reads, fresh ones for changes. No agent runs them, so
// they stay PENDING/CREATING: calls that need RUNNING or STOPPED pass the policy, then meet FAILED_PRECONDITION.
const obj = "object" as const;
const FP = Code.FailedPrecondition;
const envRules: Record<string, Rule> = {
  CreateEnvironment: { need: "member", scope: ws, req: (fx) => ({ workspaceId: fx.a, name: `env-${fx.n()}`, image: "ubuntu:24.04" }) },
  GetEnvironment: { need: "viewer", scope: obj, req: (fx) => ({ id: fx.env }) },
  ListEnvironments: { need: "viewer", scope: ws, req: (fx) => ({ workspaceId: fx.a }) },
  StartEnvironment: { need: "member", scope: obj, allowed: FP, req: (fx) => ({ id: fx.env }) },
  StopEnvironment: { need: "member", scope: obj, req: async (fx) => ({ id: await fx.fresh.env() }) },
  RestartEnvironment: { need: "member", scope: obj, allowed: FP, req: (fx) => ({ id: fx.env }) },
  DeleteEnvironment: { need: "member", scope: obj, req: async (fx) => ({ id: await fx.fresh.env() }) },
  AddPortMapping: {
    need: "member",
    scope: obj,
    req: async (fx) => ({ environmentId: await fx.fresh.env(), port: { name: "web", containerPort: 8080 } }),
  },
  RemovePortMapping: {
    need: "member",
    scope: obj,
    allowed: Code.NotFound,
    req: (fx) => ({ environmentId: fx.env, portMappingId: NO_SUCH_ENV }),
  },
  ListPortMappings: { need: "viewer", scope: obj, req: (fx) => ({ environmentId: fx.env }) },
  StreamLogs: { need: "viewer", scope: obj, req: (fx) => ({ environmentId: fx.env, tailLines: 10 }) },
  WatchEnvironments: { need: "viewer", scope: ws, req: (fx) => ({ workspaceId: fx.a }) },
  ListGpuModels: { need: "member", scope: ws, req: (fx) => ({ workspaceId: fx.a }) },
  // The shared environment is not RUNNING (no agent runs it): an allowed caller gets that far.
  OpenSshTunnel: { need: "member", scope: obj, allowed: Code.FailedPrecondition, req: (fx) => ({ environmentId: fx.env }) },
  AddSshKey: { need: "member", scope: obj, req: (fx) => ({ environmentId: fx.env, sshPublicKey: `ssh-ed25519 AAAAauthz${fx.n()} authz` }) },
  // A key never added: an allowed caller finds none to remove.
  RemoveSshKey: {
    need: "member",
    scope: obj,
    allowed: Code.NotFound,
    req: (fx) => ({ environmentId: fx.env, sshPublicKey: `ssh-ed25519 AAAAnever${fx.n()} authz` }),
  },
};

const TABLE: [DescService, Record<string, Rule>][] = [
  [HostService, hostRules],
  [GpuService, gpuRules],
  [WorkspaceService, workspaceRules],
  [EnvironmentService, envRules],
];

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
/** How long a server stream is given to fail or send its first message. */
const FIRST_MESSAGE_MS = 300;
const QUIET = Symbol("quiet");

/** Calls `m` and returns the code it ends with. Streams are judged by their first message. */
async function callOnce(
  client: Record<string, (...args: unknown[]) => unknown>,
  m: DescMethod,
  req: unknown,
  quietOk: boolean,
): Promise<Outcome> {
  const abort = new AbortController();
  const requests = new Channel<unknown>();
  try {
    const fn = client[m.localName]!.bind(client);
    if (m.methodKind === "unary") {
      await fn(req, { signal: abort.signal });
    } else if (m.methodKind === "client_streaming") {
      for (const r of req as unknown[]) requests.push(r);
      requests.close();
      await fn(requests, { signal: abort.signal });
    } else {
      if (m.methodKind === "bidi_streaming") requests.push(req);
      const responses = (fn(m.methodKind === "bidi_streaming" ? requests : req, { signal: abort.signal }) as AsyncIterable<unknown>)[
        Symbol.asyncIterator
      ]();
      const first = responses.next();
      first.catch(() => undefined);
      // A refused stream fails at once; an allowed one sends a first message or ends (or, if quietOk, stays quiet).
      const r = await Promise.race([first, sleep(FIRST_MESSAGE_MS).then(() => QUIET)]);
      if (r === QUIET && !quietOk) assert.fail(`${m.name}: neither an error nor a first message within ${FIRST_MESSAGE_MS} ms`);
    }
    return OK;
  } catch (err) {
    if (err instanceof assert.AssertionError) throw err;
    return ConnectError.from(err).code;
  } finally {
    requests.close();
    abort.abort();
  }
}

describe("authorization policy", () => {
  let server: TestServer;
  const tokens = {} as Record<Kind, string | null>;
  const fx = {} as Fixtures;

  before(async () => {
    const clock = new ManualClock(new Date("2026-11-30T12:00:00Z"));
    server = await startTestServer({ clock });
    const hosts = server.client(HostService);
    const gpus = server.client(GpuService);
    const workspaces = server.client(WorkspaceService);
    let counter = 0;
    fx.n = () => ++counter;

    const host = await hosts.createHost({ name: "authz-agent", address: "10.20.0.2" });
    const gpuHost = await hosts.createHost({ name: "authz-gpus", address: "10.20.0.3" });
    const beat = async () => {
      await server.client(HostService, { token: host.agentToken }).heartbeat({ hostId: host.host!.id, agentVersion: "authz" });
      await server.client(HostService, { token: gpuHost.agentToken }).heartbeat({ hostId: gpuHost.host!.id, agentVersion: "authz" });
    };
    await beat();
    const newGpu = async () => {
      const i = fx.n();
      return (
        await gpus.createGpu({ hostId: gpuHost.host!.id, index: i, uuid: `GPU-authz-fx-${i}`, model: "NVIDIA L4", memoryBytes: 24n * GiB })
      ).gpu!.id;
    };
    const a = (await workspaces.createWorkspace({ name: "authz-a" })).workspace!.id;
    const environments = server.client(EnvironmentService);
    const newEnv = async () =>
      (await environments.createEnvironment({ workspaceId: a, name: `authz-env-${fx.n()}`, image: "ubuntu:24.04" })).environment!.id;
    const b = (await workspaces.createWorkspace({ name: "authz-b" })).workspace!.id;
    const newToken = async (workspaceId: string, role: ApiTokenRole, ttlSeconds?: bigint) =>
      workspaces.createApiToken({
        workspaceId,
        name: `authz-${fx.n()}`,
        role,
        ttl: ttlSeconds === undefined ? undefined : { seconds: ttlSeconds },
      });

    Object.assign(fx, {
      a,
      b,
      host: host.host!.id,
      gpuHost: gpuHost.host!.id,
      gpu: await newGpu(),
      fresh: {
        workspace: async () => (await workspaces.createWorkspace({ name: `authz-fresh-${fx.n()}` })).workspace!.id,
        host: async () => (await hosts.createHost({ name: `authz-fresh-${fx.n()}`, address: "10.20.0.9" })).host!.id,
        gpu: newGpu,
        allocatedGpu: async () => (await gpus.allocateGpu({ gpuId: await newGpu(), holder: "authz" })).gpu!.id,
        token: async () => (await newToken(a, ApiTokenRole.VIEWER)).apiToken!.id,
        env: newEnv,
      },
    });
    fx.env = await newEnv();

    Object.assign(tokens, {
      "cluster admin": ADMIN_TOKEN,
      "A admin": (await newToken(a, ApiTokenRole.ADMIN)).secret,
      "A member": (await newToken(a, ApiTokenRole.MEMBER)).secret,
      "A viewer": (await newToken(a, ApiTokenRole.VIEWER)).secret,
      "B member": (await newToken(b, ApiTokenRole.MEMBER)).secret,
      "host agent": host.agentToken,
      "garbage token": `rgpu_0123456789abcdef_${"A".repeat(43)}`,
      "no token": null,
    });
    // The revoked and expired tokens work once first, so that no cache of valid tokens can hide the change.
    const revoked = await newToken(a, ApiTokenRole.ADMIN);
    const expiring = await newToken(a, ApiTokenRole.ADMIN, 60n);
    for (const t of [revoked.secret, expiring.secret]) await server.client(WorkspaceService, { token: t }).getWorkspace({ id: a });
    await workspaces.revokeApiToken({ workspaceId: a, tokenId: revoked.apiToken!.id });
    clock.advance(61_000);
    await beat(); // the hosts outlived their lease while the clock moved
    tokens["A revoked"] = revoked.secret;
    tokens["A expired"] = expiring.secret;
  });
  after(() => server?.close());

  it("has a rule for every RPC of the four services, and none for an RPC that does not exist", () => {
    for (const [service, rules] of TABLE) {
      const names = service.methods.map((m) => m.name);
      assert.deepEqual(
        names.filter((n) => !(n in rules)),
        [],
        `${service.name} RPCs without a rule`,
      );
      assert.deepEqual(
        Object.keys(rules).filter((n) => !names.includes(n)),
        [],
        `${service.name} rules for unknown RPCs`,
      );
    }
  });

  for (const [service, rules] of TABLE) {
    for (const m of service.methods) {
      const rule = rules[m.name];
      if (!rule) continue; // reported by the coverage test above
      describe(`${service.name}.${m.name}`, () => {
        for (const kind of KINDS) {
          const want = expected(rule, kind);
          it(`${kind} → ${codeName(want)}`, async () => {
            const protocol = m.methodKind === "bidi_streaming" ? "grpc" : "connect";
            const client = server.client(service, { token: tokens[kind], protocol }) as unknown as Record<
              string,
              (...args: unknown[]) => unknown
            >;
            const got = await callOnce(client, m, await rule.req(fx, kind), rule.quiet === true);
            assert.equal(
              codeName(got),
              codeName(want),
              `${service.name}.${m.name} as ${kind}: expected ${codeName(want)}, got ${codeName(got)}`,
            );
          });
        }
      });
    }
  }
});
