// npm run bench:scheduling [-- --hosts 1000 --callers 500 --requests 2000 --latency-callers 8
//   --latency-requests 1000 --placement-hosts 10000 --placement-requests 1000 --placement-callers 16 --gpus 80000]
// 1. CreateEnvironment against a fleet of `hosts` × 8 GPUs (rows written straight into PostgreSQL):
//    `callers` concurrent clients, each asking for 1-2 GPUs, through the real server; p50/p99 and
//    throughput. Then, on the same server, `latency-callers` clients: the latency of a loaded but not
//    queued server. First, as the baseline, `latency-callers` clients calling GetWorkspace (one read
//    through the same server, client and RPC layer): what any call costs here.
// 2. The same creation path in-process on a fleet of `placement-hosts` hosts, once with the real
//    placement and once with a naive one (load every free GPU into the application and pick there,
//    under a table lock so it stays correct), as a ratio. `placement-callers` concurrent callers:
//    enough to contend, few enough that no call waits a minute for a connection and fails.
//    Then, on that fleet, the leader's round (reconciler pass, idle check) with `reconcile-environments`
//    running environments, and a pass with all of them starting.
// 3. ListGpus with a fleet of `--gpus` GPUs: p50/p99 per page (100) for several filters.
// `--list-only` runs part 3 alone, `--scheduling-only` parts 1 and 2. After each part that creates
// environments the bench checks that every one holds exactly its GPUs and fails loudly if not.
import { readdirSync, readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import type { MikroORM } from "@mikro-orm/postgresql";
import pg from "pg";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { EnvironmentService } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService, GpuStatus } from "../../gen/remotegpu/v1/gpu_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { freePort, serverEnv, spawnServer } from "../../test/support/child.js";
import { EnvironmentManager, type EnvironmentInput } from "../../src/environment/environment-manager.js";
import { placeEnvironment } from "../../src/environment/placement.js";
import { systemClock } from "../../src/platform/clock.js";
import { EnvironmentReconciler } from "../../src/environment/environment-reconciler.js";
import { IdleStopper } from "../../src/environment/idle-stopper.js";
import { WorkloadActivity } from "../../src/environment/workload-activity.js";
import { createLogger } from "../../src/platform/logger.js";
import type { Runtime } from "../../src/runtime/runtime.js";
import { entities } from "../../src/entities.js";
import { LocalClusterEvents } from "../../src/platform/cluster-events.js";
import { openDatabase } from "../../src/platform/database.js";
import { QuotaLedger } from "../../src/workspace/quota-ledger.js";
import { createTestDatabase } from "../../test/support/database.js";
import { cpuSeconds } from "../proc.js";

const { values } = parseArgs({
  options: {
    hosts: { type: "string", default: "1000" },
    callers: { type: "string", default: "500" },
    requests: { type: "string", default: "2000" },
    "latency-callers": { type: "string", default: "8" },
    "latency-requests": { type: "string", default: "1000" },
    "placement-hosts": { type: "string", default: "10000" },
    "placement-requests": { type: "string", default: "1000" },
    "placement-callers": { type: "string", default: "16" },
    "reconcile-environments": { type: "string", default: "10000" },
    "scheduling-only": { type: "boolean", default: false },
    gpus: { type: "string", default: "80000" },
    "list-only": { type: "boolean", default: false },
  },
});
const ADMIN = "bench-admin-token-0123456789";
const TEAMS = 50;
const BLANK: Omit<EnvironmentInput, "workspaceId" | "name" | "gpuCount"> = {
  image: "img",
  command: [],
  args: [],
  env: {},
  gpuModel: "",
  migProfile: "",
  cpuMillicores: 0,
  memoryBytes: 0,
  storageBytes: 0,
  ports: [],
  sshPublicKeys: [],
  idleTimeoutMinutes: 0,
  requestId: "",
};
const MODELS = ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA L4"];

/** Hosts ONLINE with 8 GPUs each, written in bulk (the API would take minutes for 10,000 hosts). */
async function seedFleet(db: pg.Client, hosts: number): Promise<void> {
  for (let start = 0; start < hosts; start += 1000) {
    const n = Math.min(1000, hosts - start);
    await db.query(
      `insert into hosts (id, name, address, labels, cpu_millicores, memory_bytes, disk_bytes, agent_version, status, status_message, schedulable, last_heartbeat_at, runtime, kubernetes_node_name, created_at, updated_at, version)
       select gen_random_uuid(), 'bench-' || ($1::int + i), '10.0.0.1', jsonb_build_object('zone', 'z' || (i % 4)), 64000, 1099511627776, 0, 'bench', 'ONLINE', '', true, now() + interval '1 day', 'AGENT', '', now(), now(), 1
         from generate_series(0, $2::int - 1) i`,
      [start, n],
    );
  }
  await db.query(
    `insert into gpus (id, host_id, index, uuid, model, memory_bytes, status, health_reasons, driver_version, cuda_version, created_at, updated_at, version)
     select gen_random_uuid(), h.id, g, 'GPU-' || h.id || '-' || g, ($1::text[])[1 + abs(hashtext(h.name)) % 3], 85899345920, 'AVAILABLE', '[]', '550', '12.4', now(), now(), 1
       from hosts h cross join generate_series(0, 7) g`,
    [MODELS],
  );
  await db.query("analyze");
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function withServer<T>(dbUrl: string, work: (baseUrl: string, pid: number) => Promise<T>): Promise<T> {
  const port = await freePort();
  // A far-off lease: the seeded hosts must not expire while the benchmark runs.
  const server = spawnServer(
    serverEnv({
      DATABASE_URL: dbUrl,
      PORT: String(port),
      BIND_ADDRESS: "127.0.0.1",
      REMOTEGPU_ADMIN_TOKEN: ADMIN,
      LOG_LEVEL: "info",
      RATE_LIMIT_PER_SECOND: "0",
      HOST_GRACE_SECONDS: "86400",
      DATABASE_POOL_SIZE: "40",
    }),
    { built: true },
  );
  try {
    await server.listening(60_000);
    return await work(`http://127.0.0.1:${port}`, server.child.pid!);
  } finally {
    await server.kill();
  }
}

const auth: Interceptor = (next) => (req) => {
  req.header.set("authorization", `Bearer ${ADMIN}`);
  return next(req);
};

/** CPU seconds used so far by every PostgreSQL process of this machine (the bench's database is local). */
function postgresCpuSeconds(): number {
  let total = 0;
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      if (stat.includes(" (postgres) ")) total += cpuSeconds(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return total;
}

/**
 * `requests` calls of `once` by `callers` concurrent callers; with `pid`, the CPU per call of that
 * process, of PostgreSQL and of this one (the client).
 */
async function run(callers: number, requests: number, once: () => Promise<void>, pid?: number) {
  const cpuBefore = pid ? cpuSeconds(pid) : 0;
  const pgBefore = postgresCpuSeconds();
  const clientBefore = process.cpuUsage();
  const latencies: number[] = [];
  let failures = 0;
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: callers }, async () => {
      while (next < requests) {
        next++;
        const t = performance.now();
        await once().catch(() => failures++);
        latencies.push(performance.now() - t);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const cpuMsPerCall = pid ? ((cpuSeconds(pid) - cpuBefore) * 1000) / requests : Number.NaN;
  const postgresMsPerCall = ((postgresCpuSeconds() - pgBefore) * 1000) / requests;
  const client = process.cpuUsage(clientBefore);
  const clientMsPerCall = (client.user + client.system) / 1000 / requests;
  return {
    perSecond: requests / seconds,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    failures,
    cpuMsPerCall,
    postgresMsPerCall,
    clientMsPerCall,
  };
}

/**
 * The baseline placement: every free GPU of the fleet read into the application and the pick made
 * there, with the GPU table locked meanwhile so that it stays correct. Same signature as the real one.
 */
const naivePlacement: typeof placeEnvironment = async (em, req) => {
  const ctx = em.getTransactionContext();
  const conn = em.getConnection();
  await conn.execute("lock table gpus in share row exclusive mode", [], "run", ctx);
  const rows = await conn.execute<{ id: string; uuid: string; index: number; model: string; host_id: string }[]>(
    "select g.id, g.uuid, g.index, g.model, g.host_id from gpus g join hosts h on h.id = g.host_id where g.status = 'AVAILABLE' and g.holder is null and h.status = 'ONLINE' and h.schedulable",
    [],
    "all",
    ctx,
  );
  const byHost = new Map<string, typeof rows>();
  for (const r of rows) if (!req.gpuModel || r.model === req.gpuModel) byHost.set(r.host_id, [...(byHost.get(r.host_id) ?? []), r]);
  const fit = [...byHost.entries()].filter(([, g]) => g.length >= req.gpuCount).sort((a, b) => a[1].length - b[1].length)[0];
  if (!fit) throw new Error("no room");
  return { hostId: fit[0], gpus: fit[1].slice(0, req.gpuCount).map((g) => ({ id: g.id, uuid: g.uuid, index: g.index, model: g.model })) };
};

/**
 * Fails the bench when a creation broke what scheduling guarantees: every environment holds exactly
 * the GPUs it asked for, each GPU held by one environment and marked as such, on the environment's host.
 */
async function checkHoldings(db: pg.Client): Promise<void> {
  const { rows } = await db.query<{ wrong_count: number; wrong_gpu: number }>(
    `select (select count(*)::int from environments e
              where e.gpu_count <> (select count(*) from gpus g where g.environment_id = e.id)) as wrong_count,
            (select count(*)::int from gpus g left join environments e on e.id = g.environment_id
              where (g.environment_id is null) <> (g.holder is null)
                 or (e.id is not null and (g.holder <> 'environment:' || e.id or g.status <> 'ALLOCATED' or g.host_id <> e.host_id))) as wrong_gpu`,
  );
  const { wrong_count, wrong_gpu } = rows[0]!;
  if (wrong_count > 0 || wrong_gpu > 0)
    throw new Error(
      `correctness check failed: ${wrong_count} environment(s) hold the wrong number of GPUs, ${wrong_gpu} GPU row(s) disagree with their holder`,
    );
}

/**
 * The leader's round (a reconciler pass and an idle check, every second) with `count` running
 * environments: the environments placed so far are cloned up to `count` and marked as their agents
 * report them (RUNNING, workload running, current generation, an idle timeout of an hour). Such
 * environments need nothing; the bench fails if a pass asks a runtime for anything or one of them
 * stops. Then the same environments all starting, none due for a retry: again nothing to do.
 */
async function reconcilerRound(orm: MikroORM, db: pg.Client, manager: EnvironmentManager, count: number) {
  const columns = (
    await db.query<{ column_name: string }>(
      "select column_name from information_schema.columns where table_name = 'environments' and table_schema = current_schema() order by ordinal_position",
    )
  ).rows.map((r) => r.column_name);
  const have = (await db.query<{ n: number }>("select count(*)::int as n from environments")).rows[0]!.n;
  const value = (c: string) =>
    c === "id"
      ? "gen_random_uuid()"
      : c === "name"
        ? "e.name || '-c' || i"
        : c === "request_id" || c === "request_hash"
          ? "null"
          : `e.${c}`;
  if (count > have)
    await db.query(
      `insert into environments (${columns.join(", ")})
       select ${columns.map(value).join(", ")}
         from generate_series(1, ${Math.ceil(count / have)}) i cross join environments e limit ${count - have}`,
    );
  // Every one stops after an idle hour: the leader's idle check (each round too) looks at them all.
  await db.query(
    `update environments set status = 'RUNNING', workload_state = 'RUNNING', workload_generation = generation,
       status_message = 'running', idle_timeout_minutes = 60`,
  );
  await db.query("vacuum analyze environments");
  let calls = 0;
  const runtime: Runtime = { run: async () => void calls++, stop: async () => void calls++, remove: async () => void calls++ };
  const options = { startTimeoutMs: 600_000, lostHostTimeoutMs: 300_000 };
  const reconciler = new EnvironmentReconciler(orm, systemClock, { AGENT: runtime }, manager, createLogger("silent"), options);
  const idle = new IdleStopper(orm, systemClock, new WorkloadActivity(systemClock, 10), manager, 10, createLogger("silent"));
  const timed = async (work: () => Promise<unknown>) => {
    const walls: number[] = [];
    let cpu = 0;
    for (let i = 0; i < 25; i++) {
      const t = performance.now();
      const c = process.cpuUsage();
      await work();
      const used = process.cpuUsage(c);
      if (i < 5) continue; // warm-up
      walls.push(performance.now() - t);
      cpu += (used.user + used.system) / 1000;
    }
    walls.sort((a, b) => a - b);
    return { passes: walls.length, p50: percentile(walls, 50), p99: percentile(walls, 99), cpuMs: cpu / walls.length };
  };
  const pass = await timed(() => reconciler.reconcile());
  let stopped = 0;
  const idleCheck = await timed(async () => (stopped += (await idle.check()).length));
  const running = (await db.query<{ n: number }>("select count(*)::int as n from environments where status = 'RUNNING'")).rows[0]!.n;
  const environments = Math.max(count, have);
  if (calls > 0 || stopped > 0 || running !== environments)
    throw new Error(
      `correctness check failed: ${calls} runtime call(s), ${stopped} stopped as idle, ${running} of ${environments} environments still RUNNING`,
    );
  // The same fleet while every workload starts (images pulling): each was asked to run a minute ago
  // and is not due again (attempt 10: a minute's backoff). A pass looks at every one and does nothing.
  await db.query(
    `update environments set status = 'STARTING', workload_state = 'STARTING', status_message = 'starting',
       transitions = transitions || jsonb_build_array(jsonb_build_object('status', 'STARTING', 'message', 'starting', 'time', now())),
       acted_at = now(), attempts = 10`,
  );
  const startingPass = await timed(() => reconciler.reconcile());
  const starting = (await db.query<{ n: number }>("select count(*)::int as n from environments where status = 'STARTING'")).rows[0]!.n;
  if (calls > 0 || starting !== environments)
    throw new Error(`correctness check failed: ${calls} runtime call(s), ${starting} of ${environments} environments still STARTING`);
  return { environments, pass, idleCheck, startingPass };
}

const hosts = Number(values.hosts);
const callers = Number(values.callers);
const requests = Number(values.requests);
const latencyCallers = Number(values["latency-callers"]);
const latencyRequests = Number(values["latency-requests"]);
const placementHosts = Number(values["placement-hosts"]);
const placementRequests = Number(values["placement-requests"]);
const placementCallers = Number(values["placement-callers"]);
const reconcileEnvironments = Number(values["reconcile-environments"]);
const results: string[] = [];
const f = (n: number) => n.toFixed(0);

if (!values["list-only"]) {
  const db = await createTestDatabase();
  const admin = new pg.Client({ connectionString: db.url });
  try {
    // The server migrates the empty database first; then the fleet goes in.
    await withServer(db.url, async () => undefined);
    await admin.connect();
    await seedFleet(admin, hosts);
    const [baseline, loaded, light] = await withServer(db.url, async (baseUrl, pid) => {
      const transport = createGrpcTransport({ baseUrl, interceptors: [auth] });
      // Teams share the fleet: a workspace's creations queue on its quota row, different teams' do not.
      const workspaces = createClient(WorkspaceService, transport);
      const teams: string[] = [];
      for (let t = 0; t < TEAMS; t++) teams.push((await workspaces.createWorkspace({ name: `bench-${t}` })).workspace!.id);
      const envs = createClient(EnvironmentService, transport);
      let i = 0;
      const create = () => {
        const n = i++;
        return envs
          .createEnvironment({ workspaceId: teams[n % TEAMS]!, name: `e${n}`, image: "img", gpuCount: 1 + (n % 2) })
          .then(() => undefined);
      };
      let k = 0;
      const read = () => workspaces.getWorkspace({ id: teams[k++ % TEAMS]! }).then(() => undefined);
      await run(latencyCallers, 500, read); // untimed: the server's first calls compile its code
      const baseline = await run(latencyCallers, latencyRequests, read, pid);
      const loaded = await run(callers, requests, create, pid);
      const light = await run(latencyCallers, latencyRequests, create, pid);
      return [baseline, loaded, light];
    });
    await checkHoldings(admin);
    results.push(
      `\n### CreateEnvironment through the API, ${hosts} hosts × 8 GPUs, ${TEAMS} workspaces\n`,
      "| call | callers | requests | throughput | p50 | p99 | CPU per call: server | PostgreSQL | client | failed |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
      ...(
        [
          ["GetWorkspace (baseline)", latencyCallers, latencyRequests, baseline],
          ["CreateEnvironment", callers, requests, loaded],
          ["CreateEnvironment", latencyCallers, latencyRequests, light],
        ] as const
      ).map(
        ([call, n, total, r]) =>
          `| ${call} | ${n} | ${total} | ${f(r.perSecond)}/s | ${r.p50.toFixed(1)} ms | ${r.p99.toFixed(1)} ms | ${r.cpuMsPerCall.toFixed(1)} ms | ${r.postgresMsPerCall.toFixed(1)} ms | ${r.clientMsPerCall.toFixed(1)} ms | ${r.failures} |`,
      ),
      `\nCreateEnvironment / GetWorkspace with ${latencyCallers} callers: throughput ${(light.perSecond / baseline.perSecond).toFixed(2)}×, p99 ${(light.p99 / baseline.p99).toFixed(1)}×.`,
    );
  } finally {
    await admin.end().catch(() => undefined);
    await db.drop();
  }
}

if (!values["list-only"]) {
  // The same creation path in-process (ledger, transaction, ports, inserts), once with the real
  // placement and once with the naive one, on fresh copies of a bigger fleet.
  const db = await createTestDatabase();
  const admin = new pg.Client({ connectionString: db.url });
  try {
    const orm = await openDatabase(db.url, entities, 40);
    await admin.connect();
    await seedFleet(admin, placementHosts);
    await admin.query(
      `insert into workspaces (id, name, display_name, labels, created_at, updated_at)
       select gen_random_uuid(), 'bench-' || i, '', '{}', now(), now() from generate_series(0, ${TEAMS - 1}) i`,
    );
    await admin.query(
      `insert into resource_quotas (workspace_id, max_gpus_per_model, allowed_gpu_models, updated_at, version)
       select id, '{}', '[]', now(), 1 from workspaces`,
    );
    const teams = (await admin.query<{ id: string }>("select id from workspaces order by name")).rows.map((r) => r.id);
    const placements: [string, typeof placeEnvironment][] = [
      ["RemoteGPU (SQL best fit, SKIP LOCKED)", placeEnvironment],
      ["naive (every free GPU into the app, table lock)", naivePlacement],
    ];
    const compared: { name: string; r: Awaited<ReturnType<typeof run>> }[] = [];
    let manager: EnvironmentManager | undefined;
    for (const [name, place] of placements) {
      await admin.query("delete from port_mappings; delete from environments");
      await admin.query(
        "update gpus set status = 'AVAILABLE', holder = null, environment_id = null, allocated_at = null where holder is not null",
      );
      await admin.query("vacuum analyze gpus, environments");
      manager = new EnvironmentManager(
        orm,
        systemClock,
        new QuotaLedger(orm, systemClock),
        { first: 20000, last: 60000 },
        new LocalClusterEvents(),
        () => undefined,
        place,
      );
      let k = 0;
      const r = await run(placementCallers, placementRequests, async () => {
        const n = k++;
        await manager!.create({ ...BLANK, workspaceId: teams[n % teams.length]!, name: `p${n}`, gpuCount: 1 + (n % 2) }, () => undefined);
      });
      await checkHoldings(admin);
      compared.push({ name, r });
    }
    const round = await reconcilerRound(orm, admin, manager!, reconcileEnvironments);
    await orm.close();
    results.push(
      `\n### Placement, in-process creation, ${placementHosts} hosts × 8 GPUs, ${placementCallers} concurrent callers over ${TEAMS} workspaces, ${placementRequests} requests\n`,
    );
    results.push("| placement | throughput | p50 | p99 | failed |", "| --- | --- | --- | --- | --- |");
    for (const { name, r } of compared) results.push(`| ${name} | ${f(r.perSecond)}/s | ${f(r.p50)} ms | ${f(r.p99)} ms | ${r.failures} |`);
    results.push(`\nPlacement throughput ratio, RemoteGPU / naive: ${(compared[0]!.r.perSecond / compared[1]!.r.perSecond).toFixed(1)}×.`);
    results.push(
      `\n### The leader's round, ${round.environments} RUNNING environments (workloads running, idle timeout 60 min) on ${placementHosts} hosts\n`,
      "| part | runs | wall p50 | wall p99 | Node CPU per run |",
      "| --- | --- | --- | --- | --- |",
      ...(
        [
          ["reconciler pass", round.pass],
          ["idle check", round.idleCheck],
          ["reconciler pass, every one STARTING and not due", round.startingPass],
        ] as const
      ).map(([name, r]) => `| ${name} | ${r.passes} | ${r.p50.toFixed(1)} ms | ${r.p99.toFixed(1)} ms | ${r.cpuMs.toFixed(1)} ms |`),
    );
  } finally {
    await admin.end().catch(() => undefined);
    await db.drop();
  }
}

if (!values["scheduling-only"]) {
  // Enough pages per filter that p99 is not just the slowest one.
  const PAGES = 200;
  const gpuCount = Number(values.gpus);
  const db = await createTestDatabase();
  const admin = new pg.Client({ connectionString: db.url });
  try {
    await withServer(db.url, async () => undefined);
    await admin.connect();
    await seedFleet(admin, Math.ceil(gpuCount / 8));
    // Autovacuum does this within a minute of a bulk insert (PostgreSQL 13+), long before a real fleet
    // is listed: without the visibility map, each count checks every matching row in the table itself.
    await admin.query("vacuum analyze gpus, hosts");
    const rows = await withServer(db.url, async (baseUrl, pid) => {
      const gpus = createClient(GpuService, createGrpcTransport({ baseUrl, interceptors: [auth] }));
      // Untimed: the server's start-up work (its first read of the whole fleet for metrics, its first
      // database connections) is no page's latency.
      for (let i = 0; i < 10; i++) await gpus.listGpus({ pageSize: 100 });
      // The first: a filter that matches nothing, whose queries cost nothing; what the call itself
      // costs (client, HTTP/2, server, on the same cores), as the baseline of the others.
      const filters: [string, Parameters<typeof gpus.listGpus>[0]][] = [
        ["nothing matches (baseline)", { model: "no such model" }],
        ["none", {}],
        ["model", { model: MODELS[0] }],
        ["free only", { freeOnly: true }],
        ["status AVAILABLE + host label", { status: GpuStatus.AVAILABLE, labelSelector: "zone=z1" }],
      ];
      const out: string[] = [];
      for (const [name, filter] of filters) {
        const latencies: number[] = [];
        let token = "";
        const cpuBefore = cpuSeconds(pid);
        for (let page = 0; page < PAGES; page++) {
          const t = performance.now();
          const res = await gpus.listGpus({ ...filter, pageSize: 100, pageToken: token });
          latencies.push(performance.now() - t);
          token = res.nextPageToken; // empty on the last page: the first again
        }
        const cpuMs = ((cpuSeconds(pid) - cpuBefore) * 1000) / PAGES;
        latencies.sort((a, b) => a - b);
        out.push(
          `| ${name} | ${latencies.length} | ${percentile(latencies, 50).toFixed(1)} ms | ${percentile(latencies, 99).toFixed(1)} ms | ${cpuMs.toFixed(1)} ms |`,
        );
      }
      // The create form's call: what each model offers now, counted over the whole fleet.
      const transport = createGrpcTransport({ baseUrl, interceptors: [auth] });
      const team = (await createClient(WorkspaceService, transport).createWorkspace({ name: "list-bench" })).workspace!.id;
      const envs = createClient(EnvironmentService, transport);
      const offered = (await envs.listGpuModels({ workspaceId: team })).models.reduce((n, m) => n + m.freeGpus, 0);
      if (offered !== gpuCount) throw new Error(`ListGpuModels offers ${offered} free GPUs of ${gpuCount}`);
      const latencies: number[] = [];
      const cpuBefore = cpuSeconds(pid);
      for (let i = 0; i < PAGES; i++) {
        const t = performance.now();
        await envs.listGpuModels({ workspaceId: team });
        latencies.push(performance.now() - t);
      }
      const cpuMs = ((cpuSeconds(pid) - cpuBefore) * 1000) / PAGES;
      latencies.sort((a, b) => a - b);
      out.push(
        `| ListGpuModels (not a page: every model's free GPUs) | ${PAGES} | ${percentile(latencies, 50).toFixed(1)} ms | ${percentile(latencies, 99).toFixed(1)} ms | ${cpuMs.toFixed(1)} ms |`,
      );
      return out;
    });
    results.push(
      `\n### ListGpus, ${gpuCount} GPUs, pages of 100 (first ${PAGES} pages per filter)\n`,
      "| filter | pages | p50 | p99 | server CPU per page |",
      "| --- | --- | --- | --- | --- |",
      ...rows,
    );
  } finally {
    await admin.end().catch(() => undefined);
    await db.drop();
  }
}

console.log(results.join("\n"));
process.exit(0);
