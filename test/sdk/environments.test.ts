import { strict as assert } from "node:assert";
import { randomUUID } from "node:crypto";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import {
  AbortedError,
  CanceledError,
  createRemoteGpuClient,
  DeadlineExceededError,
  EnvironmentFailedError,
  EnvironmentStatus,
  followLogs,
  NotFoundError,
  QuotaExceededError,
  ResourceExhaustedError,
  waitForEnvironment,
  type RemoteGpuClient,
} from "../../sdk/src/index.js";
import { ManualClock } from "../../src/platform/clock.js";
import { eventually } from "../support/eventually.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";
import { WorkloadAgent } from "../support/workload-agent.js";

const H100 = "NVIDIA H100 80GB HBM3";

async function rejectsWith<E extends Error>(call: Promise<unknown>, type: abstract new (...args: never[]) => E): Promise<E> {
  try {
    await call;
  } catch (err) {
    assert.ok(err instanceof type, `expected ${type.name}, got ${String(err)}`);
    return err;
  }
  assert.fail(`expected ${type.name}, but the call succeeded`);
}

describe("SDK helpers with environments on an agent host", () => {
  let server: TestServer;
  let client: RemoteGpuClient;
  let agent: WorkloadAgent;
  let hostId: string;
  let ws: string;

  before(async () => {
    server = await startTestServer({ clock: new ManualClock(new Date("2026-12-01T08:00:00Z")), env: { HOST_PORT_RANGE: "32000-32099" } });
    client = createRemoteGpuClient({ baseUrl: server.baseUrl, token: ADMIN_TOKEN });
    const created = await client.hosts.createHost({ name: "sdk-host", address: "10.2.0.1" });
    hostId = created.host!.id;
    agent = new WorkloadAgent(
      server,
      created.agentToken,
      hostId,
      [0, 1, 2, 3].map((index) => ({ index, uuid: `GPU-sdk-${index}`, model: H100 })),
    );
    await agent.welcome;
    ws = (await client.workspaces.createWorkspace({ name: "sdk-envs" })).workspace!.id;
  });
  after(async () => {
    client.close();
    await agent.close();
    await server.close();
  });

  const create = async (name: string, gpuCount = 0, workspaceId = ws) =>
    (await client.environments.createEnvironment({ workspaceId, name, image: "img", command: ["run"], gpuCount })).environment!;

  it("waitForEnvironment resolves when the environment is RUNNING", async () => {
    const env = await create("waited", 1);
    assert.equal(env.status, EnvironmentStatus.PENDING);
    const running = await waitForEnvironment(client, env.id, EnvironmentStatus.RUNNING, { timeoutMs: 10_000 });
    assert.equal(running.id, env.id);
    assert.equal(running.status, EnvironmentStatus.RUNNING);
    // Already there: resolves from the watch's initial state.
    assert.equal((await waitForEnvironment(client, env.id, EnvironmentStatus.RUNNING)).status, EnvironmentStatus.RUNNING);
    await client.environments.stopEnvironment({ id: env.id });
    assert.deepEqual((await waitForEnvironment(client, env.id, EnvironmentStatus.STOPPED, { timeoutMs: 10_000 })).gpuIds, []);
  });

  it("waitForEnvironment rejects on FAILED, on timeout, on cancel, and for an unknown environment", async () => {
    agent.behaviour = "fail";
    try {
      const env = await create("doomed", 1);
      const err = await rejectsWith(
        waitForEnvironment(client, env.id, EnvironmentStatus.RUNNING, { timeoutMs: 10_000 }),
        EnvironmentFailedError,
      );
      assert.equal(err.environment.status, EnvironmentStatus.FAILED);
      assert.match(err.message, /failed while waiting for RUNNING: .*exited with code 3/);
    } finally {
      agent.behaviour = "run";
    }

    agent.behaviour = "ignore";
    try {
      const env = await create("stuck");
      const started = Date.now();
      const late = await rejectsWith(
        waitForEnvironment(client, env.id, EnvironmentStatus.RUNNING, { timeoutMs: 300 }),
        DeadlineExceededError,
      );
      assert.ok(Date.now() - started < 2000);
      assert.match(late.message, /did not reach RUNNING within 300 ms \(last seen (PENDING|CREATING)\)/);
      const abort = new AbortController();
      setTimeout(() => abort.abort(), 100);
      await rejectsWith(waitForEnvironment(client, env.id, EnvironmentStatus.RUNNING, { signal: abort.signal }), CanceledError);
    } finally {
      agent.behaviour = "run";
    }
    await rejectsWith(waitForEnvironment(client, randomUUID(), EnvironmentStatus.RUNNING), NotFoundError);
  });

  it("followLogs yields the tail, then new lines, and ends with the environment or on abort", async () => {
    const env = await create("chatty");
    await waitForEnvironment(client, env.id, EnvironmentStatus.RUNNING, { timeoutMs: 10_000 });
    agent.log(env.id, "one", "two", "three");
    await eventually(
      "the tail of the stored lines",
      async () => {
        const tail: string[] = [];
        for await (const line of followLogs(client, env.id, { tailLines: 2, follow: false })) tail.push(line.text);
        return tail.join() === "two,three";
      },
      { ms: 10_000, everyMs: 20 },
    );

    const followed: string[] = [];
    const following = (async () => {
      for await (const line of followLogs(client, env.id, { tailLines: 1 })) {
        followed.push(line.text);
        if (line.text === "four") await client.environments.stopEnvironment({ id: env.id });
      }
    })();
    await eventually("the followed tail", async () => followed.length === 1, { ms: 10_000, everyMs: 20 });
    agent.log(env.id, "four");
    await following; // ends by itself when the environment stops
    assert.deepEqual(followed, ["three", "four"]);

    const other = await create("quiet");
    await waitForEnvironment(client, other.id, EnvironmentStatus.RUNNING, { timeoutMs: 10_000 });
    const abort = new AbortController();
    setTimeout(() => abort.abort(), 150);
    const lines = [];
    for await (const line of followLogs(client, other.id, { signal: abort.signal })) lines.push(line);
    assert.ok(abort.signal.aborted, "the loop ended because of the abort, without an error");
  });

  it("streams live GPU telemetry", async () => {
    const abort = new AbortController();
    const beating = setInterval(() => agent.beat([{ uuid: "GPU-sdk-2", index: 2, util: 42 }]), 50);
    try {
      for await (const { sample } of client.gpus.watchGpuTelemetry({ hostId }, { signal: abort.signal })) {
        if (sample?.gpuUuid !== "GPU-sdk-2") continue;
        assert.equal(sample.metrics?.gpuUtilizationPercent, 42);
        assert.equal(sample.hostId, hostId);
        break;
      }
    } finally {
      clearInterval(beating);
      abort.abort();
    }
  });

  it("maps quota refusals to QuotaExceededError with their figures", async () => {
    const capped = (await client.workspaces.createWorkspace({ name: "sdk-capped" })).workspace!.id;
    await client.workspaces.setResourceQuota({ quota: { workspaceId: capped, maxGpus: 1, maxEnvironments: 2 } });
    await create("holds-one", 1, capped);
    const err = await rejectsWith(create("wants-two", 2, capped), QuotaExceededError);
    assert.ok(err instanceof ResourceExhaustedError);
    assert.equal(err.code, Code.ResourceExhausted);
    assert.deepEqual([err.dimension, err.limit, err.inUse, err.requested], ["max_gpus", 1, 1, 2]);
    assert.equal(err.message, "quota exceeded: max_gpus is 1, 1 in use, 2 more requested");
    await create("second", 0, capped);
    const envs = await rejectsWith(create("third", 0, capped), QuotaExceededError);
    assert.deepEqual([envs.dimension, envs.limit, envs.inUse, envs.requested], ["max_environments", 2, 2, 1]);
  });

  it("retries CreateEnvironment only when it carries a request id", async () => {
    const attempts: string[] = [];
    let failNext = 0;
    const flaky: Interceptor = (next) => async (req) => {
      if (req.method.name !== "CreateEnvironment") return next(req);
      attempts.push(req.method.name);
      if (failNext > 0) {
        failNext--;
        // As if the first attempt had been carried out and its answer lost.
        await next(req);
        throw new ConnectError("stub: answer lost", Code.Aborted);
      }
      return next(req);
    };
    const c = createRemoteGpuClient({ baseUrl: server.baseUrl, token: ADMIN_TOKEN, interceptors: [flaky], retryBackoff: { initialMs: 5 } });
    try {
      failNext = 1;
      const env = (await c.environments.createEnvironment({ workspaceId: ws, name: "keyed", image: "img", requestId: "sdk-req-1" }))
        .environment!;
      assert.equal(attempts.length, 2, "retried");
      assert.equal(
        (await client.environments.listEnvironments({ workspaceId: ws })).environments.filter((e) => e.name === "keyed").length,
        1,
        "created once",
      );
      assert.equal(env.name, "keyed");

      attempts.length = 0;
      failNext = 1;
      await rejectsWith(c.environments.createEnvironment({ workspaceId: ws, name: "unkeyed", image: "img" }), AbortedError);
      assert.equal(attempts.length, 1, "not retried without a request id");
    } finally {
      c.close();
    }
  });
});
