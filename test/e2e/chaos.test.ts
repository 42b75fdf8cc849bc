import { strict as assert } from "node:assert";
import { randomInt } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import type { RunEnvironmentCommand } from "../../gen/remotegpu/v1/agent_pb.js";
import { EnvironmentService, EnvironmentStatus } from "../../gen/remotegpu/v1/environment_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { freePort, isListening, serverEnv, spawnServer, type ServerProcess } from "../support/child.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { eventually } from "../support/eventually.js";
import { ADMIN_TOKEN, clients } from "../support/server.js";
import { WorkloadAgent } from "../support/workload-agent.js";

/*
 * The control plane SIGKILLed at random points of a mixed workload (creates, stops, starts, restarts,
 * deletes, reads, agent heartbeats), several times in one run: sometimes mid-workload, sometimes moments
 * after a restart while agents are still reconnecting (one of them now and then only seconds later).
 * After every restart, once nothing is in a transitional state, the invariants are checked from the
 * API, from the database and from what the agents run; right after every kill, the database the dead
 * process left behind is checked too. Two "keeper" environments, never touched by the workload, must
 * stay RUNNING at their first generation throughout: a restart of the control plane restarts nothing.
 *
 * Random choices come from CHAOS_SEED (printed with any failure; set it to replay the same choices;
 * the interleaving of concurrent calls still depends on the machine). CHAOS_KILLS sets the number
 * of kills (default 5).
 */

const SEED = process.env.CHAOS_SEED ? Number(process.env.CHAOS_SEED) : randomInt(2 ** 31);
const KILLS = Number(process.env.CHAOS_KILLS ?? 5);
const WORKERS = 4;
const GPUS_PER_HOST = 4;
const HOLDING = ["PENDING", "CREATING", "STARTING", "RUNNING", "STOPPING", "DELETING"];
/** What an environment should have become, as far as the answers the workload got tell. */
type Desired = "RUNNING" | "STOPPED" | "GONE";

/** mulberry32: small, fast, and the same sequence for the same seed. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Errors that say the call changed nothing (its transaction rolled back); any other error leaves the outcome unknown. */
const REFUSALS = new Set([
  Code.FailedPrecondition,
  Code.NotFound,
  Code.AlreadyExists,
  Code.ResourceExhausted,
  Code.InvalidArgument,
  Code.Aborted,
]);

/**
 * Whether the server refused the call. Only an answer from the server counts (it carries the
 * request id): connect-node reports a connection reset by a dying server as ABORTED too.
 */
const isRefusal = (e: ConnectError) => REFUSALS.has(e.code) && e.metadata.get("x-request-id") !== null;

interface Tracked {
  key: string;
  workspaceId: string;
  name: string;
  id?: string;
  gpuCount: number;
  portCount: number;
  /** Every state the answers so far allow (one after a definite answer, several after unknown ones). */
  possible: Set<Desired>;
  /** One call at a time per environment, so the order of answers is the order of effects. */
  busy: boolean;
  /** Generation it ran at when last checked RUNNING, while no call touched it since. */
  stableGeneration?: number;
  /** The calls on it and their answers, for failure messages. */
  history: string[];
  /** Created before the chaos and never touched by the workload: must stay RUNNING at its first generation. */
  keeper?: boolean;
}

interface HostUnderTest {
  id: string;
  name: string;
  token: string;
  gpus: { index: number; uuid: string }[];
  /** Every agent connection of this host so far; the last is the current one. */
  agents: WorkloadAgent[];
}

interface Snapshot {
  envs: {
    id: string;
    workspace_id: string;
    name: string;
    status: string;
    status_message: string;
    host_id: string | null;
    gpu_count: number;
    port_count: number;
    generation: number;
    workload_state: string;
    workload_generation: number;
    attempts: number;
    acted_at: Date | null;
    transitions: unknown;
  }[];
  gpus: { id: string; host_id: string; uuid: string; status: string; holder: string | null; environment_id: string | null }[];
  ports: { environment_id: string; host_id: string; host_port: number; name: string }[];
  quotas: { workspace_id: string; max_gpus: number; max_environments: number }[];
  hosts: { id: string; name: string; status: string }[];
}

describe("e2e: the control plane SIGKILLed at random points of a mixed workload, repeatedly", function () {
  this.timeout(240_000);
  let db: TestDatabase;
  let pool: pg.Pool;
  let dataDir: string;
  const servers: ServerProcess[] = [];
  const hosts: HostUnderTest[] = [];
  /** Loops of the test run while this holds; after() ends them even when the test failed. */
  let live = true;

  before(async () => {
    db = await createTestDatabase();
    pool = new pg.Pool({ connectionString: db.url, max: 2, application_name: "chaos-test" });
    dataDir = await mkdtemp(path.join(tmpdir(), "remotegpu-chaos-"));
  });
  after(async () => {
    live = false;
    for (const h of hosts) for (const a of h.agents) await a.close();
    for (const s of servers) await s.kill();
    await pool.end();
    await db.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  it(`after each restart: no GPU or port held twice, quotas kept, agents run exactly the RUNNING environments, nothing lost (seed ${SEED})`, async () => {
    const rng = random(SEED);
    const log: string[] = [];
    const note = (line: string) => log.push(`${new Date().toISOString().slice(11, 23)} ${line}`);
    try {
      await chaos(rng, note);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      // Every server's output, kept for reading after the test's own folders are gone.
      const logs = await mkdtemp(path.join(tmpdir(), "remotegpu-chaos-logs-"));
      for (const [i, s] of servers.entries())
        await writeFile(path.join(logs, `server-${i}.log`), `${s.stdout()}\n--- stderr ---\n${s.stderr()}`);
      throw new Error(
        `[replay with CHAOS_SEED=${SEED}] ${message}\n--- test log ---\n${log.slice(-60).join("\n")}\n--- server logs: ${logs} ---\n--- last server ---\n${
          servers
            .at(-1)
            ?.stdout()
            .split("\n")
            .filter((l) => /"level":(40|50|60)/.test(l))
            .slice(-30)
            .join("\n") ?? ""
        }\n${servers.at(-1)?.stderr().slice(-2000) ?? ""}`,
        { cause: err },
      );
    }
    if (process.env.CHAOS_VERBOSE) console.log(log.join("\n"));
  });

  async function chaos(rng: () => number, note: (line: string) => void): Promise<void> {
    const port = await freePort();
    const baseUrl = `http://127.0.0.1:${port}`;
    const api = clients(baseUrl);
    const envs = api.client(EnvironmentService);
    const startedAt = Date.now();

    let server: ServerProcess | undefined;
    const start = async () => {
      // The previous process is dead (its exit was awaited); nothing else may answer on the port.
      assert.ok(!(await isListening(port)), `port ${port} is free before the restart`);
      server = spawnServer(
        serverEnv({
          DATABASE_URL: db.url,
          PORT: String(port),
          BIND_ADDRESS: "127.0.0.1",
          REMOTEGPU_ADMIN_TOKEN: ADMIN_TOKEN,
          LOG_LEVEL: "info",
          DATA_DIR: dataDir,
          HOST_PORT_RANGE: "41000-41015",
          HEARTBEAT_INTERVAL_SECONDS: "2",
          // Restarts take seconds on a loaded machine: no host may look lost meanwhile.
          HOST_GRACE_SECONDS: "60",
          RATE_LIMIT_PER_SECOND: "0",
          SHUTDOWN_TIMEOUT_SECONDS: "1",
        }),
      );
      servers.push(server);
      await server.listening(60_000);
    };
    /** Server processes killed so far. */
    let lives = 0;
    const kill = async () => {
      const s = server!;
      s.child.kill("SIGKILL");
      lives++;
      running = false; // calls after this would only meet a closed port
      assert.equal(await s.exited(15_000), "SIGKILL");
      server = undefined;
      // Really gone for PostgreSQL too: its sessions (and the leader lock with them) have ended.
      await eventually("the killed server's database sessions to end", async () => {
        const { rows } = await pool.query<{ n: number }>(
          "select count(*)::int as n from pg_stat_activity where datname = current_database() and application_name <> 'chaos-test'",
        );
        return rows[0]!.n === 0;
      });
    };

    // --- setup: three hosts of four GPUs, two workspaces whose quotas are tighter than the hosts.
    await start();
    for (let i = 0; i < 3; i++) {
      const { host, agentToken } = await api.client(HostService).createHost({ name: `chaos-${i}`, address: `10.9.0.${i + 1}` });
      hosts.push({
        id: host!.id,
        name: host!.name,
        token: agentToken,
        gpus: Array.from({ length: GPUS_PER_HOST }, (_, g) => ({ index: g, uuid: `GPU-chaos-${i}-${g}` })),
        agents: [],
      });
    }
    const workspaces = api.client(WorkspaceService);
    const wsA = (await workspaces.createWorkspace({ name: "chaos-a" })).workspace!.id;
    const wsB = (await workspaces.createWorkspace({ name: "chaos-b" })).workspace!.id;
    await workspaces.setResourceQuota({ quota: { workspaceId: wsA, maxGpus: 5, maxEnvironments: 6 } });
    await workspaces.setResourceQuota({ quota: { workspaceId: wsB, maxGpus: 3, maxEnvironments: 5 } });
    const workspaceIds = [wsA, wsB];

    // --- agents: connect (again), reporting what they run; heartbeat every second while connected.
    /** Connects the host's agent to the server of this life; gives up once that server is killed. */
    const connect = async (h: HostUnderTest, life: number) => {
      if (life !== lives) return;
      const previous = h.agents.at(-1);
      await previous?.close(); // its stream is over: what it runs is final until the new one connects
      for (let attempt = 1; life === lives; attempt++) {
        const running = h.agents.at(-1)?.running ?? new Map<string, bigint>();
        const agent = new WorkloadAgent(api, h.token, h.id, h.gpus, running);
        h.agents.push(agent);
        let welcomed = false;
        void agent.welcome.then(() => (welcomed = true));
        for (const until = Date.now() + 10_000; !welcomed && life === lives && Date.now() < until; ) await sleep(50);
        if (welcomed) return;
        await agent.close();
        if (attempt >= 5) assert.fail(`the agent of ${h.name} was not welcomed after ${attempt} attempts`);
      }
    };
    const beats = hosts.map(async (h) => {
      while (live) {
        const agent = h.agents.at(-1);
        if (agent) await Promise.race([agent.beat([], []), sleep(3000)]);
        await sleep(1000);
      }
    });

    // --- the workload and what the answers it got allow.
    const tracked = new Map<string, Tracked>();
    const violations: string[] = [];
    let created = 0;
    let answered = 0;
    let running = false;
    const counts: Record<string, number> = { create: 0, stop: 0, start: 0, delete: 0, restart: 0, read: 0, ok: 0, unknown: 0 };

    const pick = (r: () => number, accept: (t: Tracked) => boolean): Tracked | undefined => {
      const candidates = [...tracked.values()].filter((t) => !t.busy && !t.keeper && t.id !== undefined && accept(t));
      return candidates.length === 0 ? undefined : candidates[Math.floor(r() * candidates.length)];
    };
    /** Runs one call on `t`; `ok` and `unknown` update what `t` may have become. */
    const call = async (
      t: Tracked,
      what: string,
      fn: () => Promise<unknown>,
      ok: () => void,
      unknown: () => void,
      refused: () => void = () => undefined,
    ) => {
      t.busy = true;
      const stable = t.stableGeneration;
      t.stableGeneration = undefined; // unless refused: then nothing changed
      const sent = Date.now() - startedAt;
      try {
        await fn();
        counts.ok++;
        ok();
        t.history.push(`${what}@${sent}ms: OK`);
      } catch (err) {
        const e = ConnectError.from(err);
        t.history.push(`${what}@${sent}ms: ${Code[e.code]} ${e.rawMessage.slice(0, 80)}`);
        if (e.code === Code.NotFound && isRefusal(e) && !t.possible.has("GONE"))
          violations.push(`${what} ${t.key}: NOT_FOUND, but it should exist (${[...t.possible].join("|")})`);
        if (isRefusal(e)) {
          const kind = `${what} ${Code[e.code]}`;
          counts[kind] = (counts[kind] ?? 0) + 1;
          t.stableGeneration = stable;
          refused();
          if (e.code === Code.NotFound) t.possible = new Set(["GONE"]); // rows never come back
        } else {
          counts.unknown++;
          unknown();
        }
      } finally {
        t.busy = false;
        answered++;
      }
    };
    const step = async (r: () => number) => {
      const dice = r();
      const workspaceId = workspaceIds[Math.floor(r() * workspaceIds.length)]!;
      if (dice < 0.3) {
        counts.create++;
        const name = `e${++created}`;
        const t: Tracked = {
          key: `${workspaceId === wsA ? "a" : "b"}/${name}`,
          workspaceId,
          name,
          gpuCount: Math.floor(r() * 3),
          portCount: Math.floor(r() * 3),
          possible: new Set(["GONE", "RUNNING"]),
          busy: false,
          history: [],
        };
        tracked.set(t.key, t);
        const ports = Array.from({ length: t.portCount }, (_, i) => ({ name: `p${i}`, containerPort: 8000 + i }));
        await call(
          t,
          "create",
          async () =>
            (t.id = (
              await envs.createEnvironment(
                { workspaceId, name, image: "img", command: ["x"], gpuCount: t.gpuCount, ports },
                { timeoutMs: 15_000 },
              )
            ).environment!.id),
          () => (t.possible = new Set(["RUNNING"])),
          () => undefined,
          () => (t.possible = new Set(["GONE"])),
        );
      } else if (dice < 0.5) {
        const t = pick(r, (t) => t.possible.has("RUNNING"));
        if (!t) return;
        counts.stop++;
        await call(
          t,
          "stop",
          () => envs.stopEnvironment({ id: t.id! }, { timeoutMs: 15_000 }),
          () => (t.possible = new Set(["STOPPED"])),
          () => t.possible.add("STOPPED"),
        );
      } else if (dice < 0.7) {
        const t = pick(r, (t) => t.possible.has("STOPPED"));
        if (!t) return;
        counts.start++;
        await call(
          t,
          "start",
          () => envs.startEnvironment({ id: t.id! }, { timeoutMs: 15_000 }),
          () => (t.possible = new Set(["RUNNING"])),
          () => t.possible.add("RUNNING"),
        );
      } else if (dice < 0.8) {
        const t = pick(r, (t) => t.possible.has("RUNNING") || t.possible.has("STOPPED"));
        if (!t) return;
        counts.delete++;
        await call(
          t,
          "delete",
          () => envs.deleteEnvironment({ id: t.id! }, { timeoutMs: 15_000 }),
          () => (t.possible = new Set(["GONE"])),
          () => t.possible.add("GONE"),
        );
      } else if (dice < 0.85) {
        const t = pick(r, (t) => t.possible.has("RUNNING"));
        if (!t) return;
        counts.restart++;
        // Only a RUNNING one restarts, and it stays RUNNING (at a new generation, on the same GPUs).
        await call(
          t,
          "restart",
          () => envs.restartEnvironment({ id: t.id! }, { timeoutMs: 15_000 }),
          () => (t.possible = new Set(["RUNNING"])),
          () => undefined,
        );
      } else {
        counts.read++;
        const t = pick(r, (t) => !t.possible.has("GONE"));
        if (!t) return void (await envs.listEnvironments({ workspaceId, pageSize: 100 }, { timeoutMs: 15_000 }).catch(() => undefined));
        t.busy = true; // a delete answered meanwhile would make a NOT_FOUND look like a loss
        await envs
          .getEnvironment({ id: t.id! }, { timeoutMs: 15_000 })
          .catch((err: unknown) => {
            const e = ConnectError.from(err);
            if (e.code === Code.NotFound && isRefusal(e) && !t.possible.has("GONE"))
              violations.push(`get ${t.key}: NOT_FOUND, but it should exist`);
            if (e.code === Code.NotFound && isRefusal(e)) t.possible = new Set(["GONE"]);
          })
          .finally(() => (t.busy = false));
      }
    };
    /** Runs the workload until `until` resolves; resolves once every call in flight has its answer. */
    const workload = async (until: Promise<unknown>, round: number) => {
      running = true;
      const workers = Array.from({ length: WORKERS }, async (_, w) => {
        const r = random(SEED * 31 + round * 1009 + w);
        while (running && live) {
          await step(r);
          await sleep(r() * 40);
        }
      });
      try {
        await until;
      } finally {
        running = false;
        await Promise.all(workers);
      }
    };

    // --- the checks.
    const snapshot = async (): Promise<Snapshot> => {
      const client = await pool.connect();
      try {
        await client.query("begin isolation level repeatable read");
        const q = async <T>(sql: string) => (await client.query(sql)).rows as T[];
        const s: Snapshot = {
          envs: await q(
            `select id, workspace_id, name, status, status_message, host_id, gpu_count, jsonb_array_length(ports) as port_count, generation, workload_state, workload_generation, attempts, acted_at, transitions from environments`,
          ),
          gpus: await q(`select id, host_id, uuid, status, holder, environment_id from gpus`),
          ports: await q(`select environment_id, host_id, host_port, name from port_mappings`),
          quotas: await q(`select workspace_id, max_gpus, max_environments from resource_quotas`),
          hosts: await q(`select id, name, status from hosts`),
        };
        await client.query("commit");
        return s;
      } finally {
        client.release();
      }
    };

    /** What must hold in any committed state, even one a killed process left behind. */
    const checkHoldings = (s: Snapshot, when: string) => {
      const problems: string[] = [];
      const envById = new Map(s.envs.map((e) => [e.id, e]));
      for (const g of s.gpus) {
        if (g.environment_id === null) {
          if (g.status === "ALLOCATED" || g.holder !== null)
            problems.push(`GPU ${g.uuid} is ${g.status} held by ${g.holder} without an environment`);
          continue;
        }
        const e = envById.get(g.environment_id);
        if (!e) problems.push(`GPU ${g.uuid} points at environment ${g.environment_id}, which does not exist`);
        else if (!HOLDING.includes(e.status)) problems.push(`GPU ${g.uuid} is held by ${e.name}, which is ${e.status}`);
        else if (e.host_id !== g.host_id) problems.push(`GPU ${g.uuid} is on another host than its environment ${e.name}`);
        if (g.status !== "ALLOCATED" || g.holder !== `environment:${g.environment_id}`)
          problems.push(`GPU ${g.uuid} of ${e?.name} is ${g.status}, holder ${g.holder}`);
      }
      const seen = new Set<string>();
      for (const p of s.ports) {
        const key = `${p.host_id}:${p.host_port}`;
        if (seen.has(key)) problems.push(`host port ${key} is mapped twice`);
        seen.add(key);
        const e = envById.get(p.environment_id);
        if (!e) problems.push(`port ${p.host_port} belongs to environment ${p.environment_id}, which does not exist`);
        else if (!HOLDING.includes(e.status)) problems.push(`port ${p.host_port} is held by ${e.name}, which is ${e.status}`);
        else if (e.host_id !== p.host_id) problems.push(`port ${p.host_port} is on another host than its environment ${e.name}`);
      }
      for (const e of s.envs) {
        const gpus = s.gpus.filter((g) => g.environment_id === e.id).length;
        const ports = s.ports.filter((p) => p.environment_id === e.id).length;
        // DELETING keeps what it held before: everything, or nothing when it was STOPPED or FAILED.
        const holds = HOLDING.includes(e.status) && !(e.status === "DELETING" && gpus === 0 && ports === 0);
        if (gpus !== (holds ? e.gpu_count : 0))
          problems.push(`${e.name} (${e.status}) holds ${gpus} GPU(s), should hold ${holds ? e.gpu_count : 0}`);
        if (ports !== (holds ? e.port_count : 0))
          problems.push(`${e.name} (${e.status}) holds ${ports} port(s), should hold ${holds ? e.port_count : 0}`);
      }
      for (const q of s.quotas) {
        const mine = s.envs.filter((e) => e.workspace_id === q.workspace_id && e.status !== "DELETED");
        const gpus = s.gpus.filter((g) => mine.some((e) => e.id === g.environment_id)).length;
        if (mine.length > q.max_environments)
          problems.push(`workspace ${q.workspace_id} has ${mine.length} environments, quota ${q.max_environments}`);
        if (gpus > q.max_gpus) problems.push(`workspace ${q.workspace_id} holds ${gpus} GPUs, quota ${q.max_gpus}`);
      }
      assert.deepEqual(problems, [], `${when}: ${problems.length} broken invariant(s)`);
    };

    const describeStuck = (s: Snapshot) =>
      s.envs
        .filter((e) => e.status !== "RUNNING" && e.status !== "STOPPED")
        .map(
          (e) =>
            `${e.name} ${e.status} "${e.status_message}" gen ${e.generation} workload ${e.workload_state || "-"}@${e.workload_generation} attempts ${e.attempts} acted ${e.acted_at?.toISOString() ?? "-"} host ${s.hosts.find((h) => h.id === e.host_id)?.name}`,
        )
        .join("\n");

    /** After a restart: wait until nothing is in a transitional state, then check everything. */
    const converge = async (round: number) => {
      let last: Snapshot | undefined;
      await eventually(
        `round ${round}: every environment RUNNING, STOPPED or gone`,
        async () => {
          const s = await snapshot();
          const done =
            s.envs.every((e) => !HOLDING.includes(e.status) || e.status === "RUNNING") && s.hosts.every((h) => h.status === "ONLINE");
          if (!done) last = s;
          return done;
        },
        60_000,
        250,
      ).catch((err: Error) => {
        const agents = hosts
          .map(
            (h) =>
              `${h.name}: runs ${[...h.agents.at(-1)!.running].map(([id, g]) => `${last?.envs.find((e) => e.id === id)?.name ?? id}@${g}`).join(" ")}`,
          )
          .join("\n");
        throw new Error(`${err.message}\n${last ? describeStuck(last) : ""}\n${agents}`);
      });

      // Each agent runs exactly the environments the database has RUNNING on its host, at their generation.
      const expected = async () => {
        const s = await snapshot();
        return hosts.map((h) => ({
          host: h.name,
          runs: Object.fromEntries(
            s.envs
              .filter((e) => e.status === "RUNNING" && e.host_id === h.id)
              .map((e) => [e.name, e.generation])
              .sort(),
          ),
        }));
      };
      const actual = async () => {
        const s = await snapshot();
        const name = (id: string) => s.envs.find((e) => e.id === id)?.name ?? `unknown ${id}`;
        return hosts.map((h) => ({
          host: h.name,
          runs: Object.fromEntries([...h.agents.at(-1)!.running].map(([id, g]) => [name(id), Number(g)]).sort()),
        }));
      };
      await eventually(
        `round ${round}: agents run what the database has RUNNING`,
        async () => JSON.stringify(await actual()) === JSON.stringify(await expected()),
        20_000,
        250,
      ).catch(async () =>
        assert.deepEqual(
          await actual(),
          await expected(),
          `round ${round}: agents run exactly the RUNNING environments (no leaked workload)`,
        ),
      );

      const s = await snapshot();
      checkHoldings(s, `round ${round} converged`);
      assert.deepEqual(
        s.envs.filter((e) => e.status === "FAILED").map((e) => `${e.name}: ${e.status_message}`),
        [],
        "nothing fails here: agents run everything, hosts stay up",
      );

      // What the agents were told to run holds no GPU or host port twice, and matches the database.
      for (const h of hosts) {
        const runs = new Map<string, RunEnvironmentCommand>();
        for (const a of h.agents) {
          for (const c of a.commands)
            if (c.command.case === "runEnvironment")
              runs.set(`${c.command.value.environmentId}@${c.command.value.generation}`, c.command.value);
        }
        const gpuOwners = new Map<string, string>();
        const portOwners = new Map<number, string>();
        for (const [id, generation] of h.agents.at(-1)!.running) {
          const e = s.envs.find((x) => x.id === id)!;
          const spec = runs.get(`${id}@${generation}`);
          assert.ok(spec, `${h.name} runs ${e.name} at generation ${generation} without having been told to`);
          for (const uuid of spec.gpuUuids) {
            assert.ok(!gpuOwners.has(uuid), `${h.name}: GPU ${uuid} given to ${gpuOwners.get(uuid)} and ${e.name}`);
            gpuOwners.set(uuid, e.name);
          }
          for (const p of spec.ports) {
            assert.ok(
              !portOwners.has(p.hostPort),
              `${h.name}: host port ${p.hostPort} given to ${portOwners.get(p.hostPort)} and ${e.name}`,
            );
            portOwners.set(p.hostPort, e.name);
          }
          const held = s.gpus
            .filter((g) => g.environment_id === id)
            .map((g) => g.uuid)
            .sort();
          assert.deepEqual([...spec.gpuUuids].sort(), held, `${e.name} runs on the GPUs the database gave it`);
          assert.deepEqual(
            spec.ports.map((p) => p.hostPort).sort(),
            s.ports
              .filter((p) => p.environment_id === id)
              .map((p) => p.host_port)
              .sort(),
            `${e.name} runs with the ports the database gave it`,
          );
        }
      }

      // The API agrees with the database, usage included, and quotas hold.
      for (const workspaceId of workspaceIds) {
        const listed = (await envs.listEnvironments({ workspaceId, pageSize: 1000 })).environments;
        const mine = s.envs.filter((e) => e.workspace_id === workspaceId);
        assert.deepEqual(
          // Host ports held (a stopped environment lists its ports with host port 0).
          listed
            .map(
              (e) =>
                `${e.name}=${EnvironmentStatus[e.status]}:${e.gpuIds.length}gpu:${e.portMappings.filter((p) => p.hostPort > 0).length}port`,
            )
            .sort(),
          mine
            .map(
              (e) =>
                `${e.name}=${e.status}:${e.status === "RUNNING" ? e.gpu_count : 0}gpu:${e.status === "RUNNING" ? e.port_count : 0}port`,
            )
            .sort(),
          `round ${round}: the API lists what the database holds`,
        );
        const { usage, quota } = await workspaces.getUsage({ workspaceId });
        const gpus = s.gpus.filter((g) => mine.some((e) => e.id === g.environment_id)).length;
        assert.deepEqual([usage!.environments, usage!.gpus], [mine.length, gpus], "usage is what the workspace holds");
        assert.ok(
          usage!.environments <= quota!.maxEnvironments! && usage!.gpus <= quota!.maxGpus!,
          `usage ${usage!.environments} env / ${usage!.gpus} GPU within quota`,
        );
      }

      // Nothing lost: every environment is where the answers the workload got say it should be.
      const lost = [...violations];
      violations.length = 0;
      for (const t of tracked.values()) {
        const row = s.envs.find((e) => e.workspace_id === t.workspaceId && e.name === t.name);
        const state: Desired | string = row === undefined ? "GONE" : row.status;
        if (!t.possible.has(state as Desired))
          lost.push(
            `${t.key} is ${state}, should be ${[...t.possible].join(" or ")}; calls: ${t.history.join("; ")}; transitions: ${row ? JSON.stringify(row.transitions) : "-"}`,
          );
        if (t.stableGeneration !== undefined && (state !== "RUNNING" || row!.generation !== t.stableGeneration)) {
          lost.push(
            `${t.key} was RUNNING at generation ${t.stableGeneration} and no call changed it since, now ${state} at generation ${row?.generation}`,
          );
        }
        if (row) t.id = row.id;
        // From here on, only answers after this check count.
        t.possible = new Set([state === "GONE" ? "GONE" : (state as Desired)]);
        t.stableGeneration = state === "RUNNING" ? row!.generation : undefined;
        if (state === "GONE") tracked.delete(t.key);
      }
      for (const e of s.envs) {
        if (![...tracked.values()].some((t) => t.workspaceId === e.workspace_id && t.name === e.name))
          lost.push(`${e.name} exists but the workload never created it`);
      }
      assert.deepEqual(lost, [], `round ${round}: environments where the answers say they should be`);
      if (last && process.env.CHAOS_VERBOSE) note(`round ${round}: the last to settle:\n${describeStuck(last)}`);
      note(
        `round ${round} converged: ${s.envs.filter((e) => e.status === "RUNNING").length} running, ${s.envs.filter((e) => e.status === "STOPPED").length} stopped, ${s.gpus.filter((g) => g.environment_id).length} GPUs held`,
      );
    };

    /** What a killed server left must hold as it is: each of its transactions committed whole or not at all. */
    const checkKilled = async (round: number) => {
      const left = await snapshot();
      const statuses = HOLDING.concat("STOPPED", "FAILED").map((st) => [st, left.envs.filter((e) => e.status === st).length] as const);
      note(
        `round ${round}: the killed server left ${statuses
          .filter(([, n]) => n > 0)
          .map(([st, n]) => `${n} ${st}`)
          .join(", ")}`,
      );
      checkHoldings(left, `round ${round}, right after the kill`);
    };

    // --- the rounds: restart, agents come back while calls already arrive, and sometimes the kill
    // comes right then; else converge and check, run the workload to a random point and kill. Right
    // after each kill, check what the dead process left.
    await Promise.all(hosts.map((h) => connect(h, lives)));
    for (const [i, workspaceId] of workspaceIds.entries()) {
      const name = `keeper-${i}`;
      const { environment } = await envs.createEnvironment({
        workspaceId,
        name,
        image: "img",
        command: ["x"],
        gpuCount: 1,
        ports: [{ name: "ssh", containerPort: 22 }],
      });
      tracked.set(name, {
        key: name,
        workspaceId,
        name,
        id: environment!.id,
        gpuCount: 1,
        portCount: 1,
        possible: new Set(["RUNNING"]),
        busy: false,
        history: [],
        keeper: true,
      });
    }
    for (let round = 0; ; round++) {
      if (round > 0) await start();
      const life = lives;
      // Most agents are back within moments; now and then one takes a while, and the reconciler
      // meanwhile tries to reach it in vain.
      const delays = hosts.map(() => (rng() < 0.2 ? 4000 + rng() * 6000 : rng() * 2500));
      const reconnected =
        round === 0 ? Promise.resolve() : Promise.all(hosts.map((h, i) => sleep(delays[i]!).then(() => connect(h, life))));
      if (round > 0 && lives < KILLS && rng() < 0.3) {
        const afterMs = Math.floor(rng() * 3000);
        await workload(
          sleep(afterMs).then(async () => {
            note(`round ${round}: SIGKILL ${afterMs} ms after the restart, before converging`);
            await kill();
          }),
          round,
        );
        await reconnected;
        answered = 0;
        await checkKilled(round);
        continue;
      }
      const burst = Math.floor(rng() * 12);
      await workload(
        reconnected.then(() => eventually("a few calls after the restart", async () => answered >= burst || undefined, 30_000, 20)),
        round,
      );
      answered = 0;
      const waited = Date.now();
      await converge(round);
      note(`round ${round}: converged and checked in ${Date.now() - waited} ms`);
      if (lives === KILLS) break;

      const after = 5 + Math.floor(rng() * 75);
      const extraMs = Math.floor(rng() * 300);
      await workload(
        (async () => {
          await eventually(`round ${round}: ${after} answers before the kill`, async () => answered >= after || undefined, 60_000, 10);
          await sleep(extraMs);
          note(`round ${round}: SIGKILL after ${answered} answers (+${extraMs} ms)`);
          await kill();
        })(),
        round,
      );
      answered = 0;
      await checkKilled(round);
    }
    live = false;
    await Promise.all(beats);
    note(`${KILLS} kills in ${Math.round((Date.now() - startedAt) / 1000)} s; calls: ${JSON.stringify(counts)}`);
  }
});
