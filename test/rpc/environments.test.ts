import { strict as assert } from "node:assert";
import { Code } from "@connectrpc/connect";
import { WorkloadState } from "../../gen/remotegpu/v1/agent_pb.js";
import { WatchEventType } from "../../gen/remotegpu/v1/common_pb.js";
import { EnvironmentService, EnvironmentStatus, PortProtocol } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService, HostStatus } from "../../gen/remotegpu/v1/host_pb.js";
import { ApiTokenRole, WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { ManualClock } from "../../src/platform/clock.js";
import { eventually } from "../support/eventually.js";
import { expectCode } from "../support/expect.js";
import { startTestServer, type TestServer } from "../support/server.js";
import { WorkloadAgent } from "../support/workload-agent.js";

const H100 = "NVIDIA H100 80GB HBM3";

describe("EnvironmentService with the agent runtime", () => {
  let server: TestServer;
  let clock: ManualClock;
  let envs: ReturnType<typeof server.client<typeof EnvironmentService>>;
  let workspaces: ReturnType<typeof server.client<typeof WorkspaceService>>;
  let gpus: ReturnType<typeof server.client<typeof GpuService>>;
  let agent: WorkloadAgent;
  let hostId: string;
  let hostAgentToken: string;
  let ws: string;

  /** Background rounds between tries: the reconciler acts on kicks and rounds, and the clock is manual. */
  const rounds = { ms: 10_000, everyMs: 20, between: () => server.app.maintain() };

  const status = (id: string, wanted: EnvironmentStatus) =>
    eventually(
      `environment ${id} to be ${EnvironmentStatus[wanted]}`,
      async () => {
        const e = (await envs.getEnvironment({ id })).environment!;
        return e.status === wanted && e;
      },
      rounds,
    );

  async function newHost(
    name: string,
    gpuCount: number,
    model = H100,
    options: { containersSupported?: boolean; runtimeUnavailableReason?: string } = {},
  ) {
    const res = await server.client(HostService).createHost({ name, address: "10.1.0.7" });
    const id = res.host!.id;
    const gpuList = Array.from({ length: gpuCount }, (_, i) => ({ index: i, uuid: `GPU-${name}-${i}`, model }));
    const a = new WorkloadAgent(server, res.agentToken, id, gpuList, new Map(), options);
    await a.welcome;
    return { id, agent: a, token: res.agentToken, gpus: gpuList };
  }

  /** The run commands an agent got for an environment, oldest first. */
  const runsOf = (a: WorkloadAgent, id: string) =>
    a.commands.flatMap((c) => (c.command.case === "runEnvironment" && c.command.value.environmentId === id ? [c.command.value] : []));

  const gone = (id: string) =>
    eventually("the environment to be gone", async () => (await envs.getEnvironment({ id }).catch(() => undefined)) === undefined, rounds);

  /** Lets the clock pass the 40 s grace: hosts whose agent left go OFFLINE, the main one stays ONLINE. */
  async function passGrace() {
    clock.advance(60_000);
    await agent.beat();
    await server.app.maintain();
  }

  before(async () => {
    clock = new ManualClock(new Date("2026-11-30T12:00:00Z"));
    server = await startTestServer({
      clock,
      env: { HOST_PORT_RANGE: "31000-31099", HOST_GRACE_SECONDS: "40", ENVIRONMENT_LOST_HOST_SECONDS: "300" },
    });
    envs = server.client(EnvironmentService);
    workspaces = server.client(WorkspaceService);
    gpus = server.client(GpuService);
    ({ id: hostId, agent, token: hostAgentToken } = await newHost("env-host", 4));
    ws = (await workspaces.createWorkspace({ name: "env-team" })).workspace!.id;
  });
  after(async () => {
    await agent.close();
    await server.close();
  });

  it("creates an environment: GPUs and ports held at once, RUNNING when the agent says so", async () => {
    const created = (
      await envs.createEnvironment({
        workspaceId: ws,
        name: "notebook",
        image: "python:3.12",
        command: ["python3", "-m", "http.server", "8888"],
        env: { MODE: "dev" },
        gpuCount: 2,
        gpuModel: H100,
        ports: [
          { name: "http", containerPort: 8888, protocol: PortProtocol.HTTP },
          { name: "ssh", containerPort: 22 },
        ],
      })
    ).environment!;
    assert.equal(created.status, EnvironmentStatus.PENDING);
    assert.equal(created.hostId, hostId);
    assert.equal(created.gpuIds.length, 2);
    assert.deepEqual(
      created.portMappings.map((p) => [p.name, p.hostPort]),
      [
        ["http", 31000],
        ["ssh", 31001],
      ],
    );
    assert.equal(created.portMappings[0]!.url, "http://10.1.0.7:31000/");

    const running = await status(created.id, EnvironmentStatus.RUNNING);
    assert.deepEqual(
      running.transitions.map((t) => EnvironmentStatus[t.status]),
      ["PENDING", "CREATING", "RUNNING"],
    );
    const run = agent.commands.find((c) => c.command.case === "runEnvironment" && c.command.value.environmentId === created.id);
    assert.ok(run?.command.case === "runEnvironment");
    assert.deepEqual(run.command.value.gpuUuids, ["GPU-env-host-0", "GPU-env-host-1"]);
    assert.deepEqual(
      run.command.value.ports.map((p) => [p.containerPort, p.hostPort]),
      [
        [8888, 31000],
        [22, 31001],
      ],
    );
    assert.equal(run.command.value.generation, 1n);
    for (const id of created.gpuIds) assert.equal((await gpus.getGpu({ id })).gpu?.environmentId, created.id);
  });

  it("shows what the runtime says while it starts (an image pull) as the status message", async () => {
    agent.behaviour = "ignore";
    try {
      const e = (await envs.createEnvironment({ workspaceId: ws, name: "pulling", image: "nvcr.io/nvidia/pytorch:24.05-py3" }))
        .environment!;
      const run = await eventually("the run command", async () => runsOf(agent, e.id)[0], rounds);
      const progress = "pulling nvcr.io/nvidia/pytorch:24.05-py3: Copying blob sha256:4a3b2c1d";
      agent.report(e.id, run.generation, WorkloadState.STARTING, progress);
      const shown = await eventually(
        "the pull in the status",
        async () => {
          const now = (await envs.getEnvironment({ id: e.id })).environment!;
          return now.statusMessage === progress && now;
        },
        rounds,
      );
      assert.equal(shown.status, EnvironmentStatus.CREATING);
      agent.report(e.id, run.generation, WorkloadState.RUNNING);
      assert.equal((await status(e.id, EnvironmentStatus.RUNNING)).statusMessage, "running");
      await envs.deleteEnvironment({ id: e.id });
      await gone(e.id);
    } finally {
      agent.behaviour = "run";
    }
  });

  it("asks again for a run that does not start, with backoff, and fails it after the start timeout with what it last said", async () => {
    agent.behaviour = "ignore";
    try {
      const e = (await envs.createEnvironment({ workspaceId: ws, name: "stuck", image: "img", gpuCount: 1 })).environment!;
      const first = await eventually("the run command", async () => runsOf(agent, e.id)[0], rounds);
      agent.report(e.id, first.generation, WorkloadState.STARTING, "pulling img");
      await server.app.maintain();
      assert.equal(runsOf(agent, e.id).length, 1, "not asked again before the backoff's 2 s");
      clock.advance(2_500);
      await eventually("the run asked again", async () => runsOf(agent, e.id).length === 2, rounds);
      // Close to the start timeout (10 min since it was created); the host's agent keeps beating.
      for (let i = 0; i < 19; i++) {
        clock.advance(30_000);
        await agent.beat();
      }
      // A run just sent again, its next try a minute away (as after many tries): past the timeout,
      // only the timeout is due.
      await server.app.orm.em
        .getConnection()
        .execute("update environments set acted_at = ?, attempts = 10 where id = ?", [clock.now(), e.id]);
      clock.advance(30_000);
      await agent.beat();
      const failed = await status(e.id, EnvironmentStatus.FAILED);
      assert.equal(failed.statusMessage, "did not start within 600 s: pulling img");
      assert.deepEqual(failed.gpuIds, []);
      await envs.deleteEnvironment({ id: e.id });
      await gone(e.id);
    } finally {
      agent.behaviour = "run";
    }
  });

  it("stops (GPUs and ports free, volume kept), starts on the same host, restarts, and deletes", async () => {
    const env = (
      await envs.createEnvironment({
        workspaceId: ws,
        name: "cycle",
        image: "img",
        command: ["sleep", "1d"],
        gpuCount: 1,
        ports: [{ name: "web", containerPort: 80 }],
      })
    ).environment!;
    await status(env.id, EnvironmentStatus.RUNNING);
    await expectCode(envs.startEnvironment({ id: env.id }), Code.FailedPrecondition, "RUNNING");

    assert.equal((await envs.stopEnvironment({ id: env.id })).environment?.status, EnvironmentStatus.STOPPING);
    const stopped = await status(env.id, EnvironmentStatus.STOPPED);
    assert.deepEqual(stopped.gpuIds, []);
    // Its ports are kept and listed, without host ports, under the ids they had.
    const unmapped = (ms: { id: string; name: string; containerPort: number; hostPort: number; url: string }[]) =>
      ms.map((p) => [p.id, p.name, p.containerPort, p.hostPort, p.url]);
    assert.deepEqual(unmapped(stopped.portMappings), [[env.portMappings[0]!.id, "web", 80, 0, ""]]);
    assert.deepEqual(unmapped((await envs.listPortMappings({ environmentId: env.id })).portMappings), unmapped(stopped.portMappings));
    assert.ok(agent.commands.some((c) => c.command.case === "stopEnvironment" && c.command.value.environmentId === env.id));
    // While stopped a port change only changes the spec; host ports come with the next start.
    const extra = (await envs.addPortMapping({ environmentId: env.id, port: { name: "x", containerPort: 81 } })).portMapping!;
    assert.deepEqual([extra.name, extra.hostPort, extra.url], ["x", 0, ""]);
    await expectCode(
      envs.addPortMapping({ environmentId: env.id, port: { name: "y", containerPort: 82 }, hostPort: 31050 }),
      Code.FailedPrecondition,
      "host_port can be chosen only while it holds its ports",
    );
    const ports = (await envs.listPortMappings({ environmentId: env.id })).portMappings;
    assert.deepEqual(
      ports.map((p) => [p.name, p.hostPort]),
      [
        ["web", 0],
        ["x", 0],
      ],
    );
    await envs.removePortMapping({ environmentId: env.id, portMappingId: extra.id });
    await expectCode(envs.removePortMapping({ environmentId: env.id, portMappingId: extra.id }), Code.NotFound, extra.id);

    const started = (await envs.startEnvironment({ id: env.id })).environment!;
    assert.equal(started.status, EnvironmentStatus.STARTING);
    assert.equal(started.hostId, hostId);
    assert.equal(started.gpuIds.length, 1);
    assert.deepEqual(
      started.portMappings.map((p) => [p.id, p.name]),
      [[env.portMappings[0]!.id, "web"]],
    );
    assert.ok(started.portMappings[0]!.hostPort > 0, "a host port again");
    await status(env.id, EnvironmentStatus.RUNNING);
    assert.equal(agent.running.get(env.id), 2n, "the start ran generation 2");

    await envs.restartEnvironment({ id: env.id });
    await status(env.id, EnvironmentStatus.RUNNING);
    assert.equal(agent.running.get(env.id), 3n, "the restart ran generation 3");

    await envs.deleteEnvironment({ id: env.id });
    await eventually(
      "the environment to be gone",
      async () => (await envs.getEnvironment({ id: env.id }).catch(() => undefined)) === undefined,
      rounds,
    );
    assert.ok(!agent.running.has(env.id));
    // The name is free again, and nothing is held.
    const again = (await envs.createEnvironment({ workspaceId: ws, name: "cycle", image: "img", command: ["true"] })).environment!;
    await envs.deleteEnvironment({ id: again.id });
  });

  it("refuses what cannot be: no room, quota, bad input, duplicates; a retried request id returns the same environment", async () => {
    const none = await expectCode(
      envs.createEnvironment({ workspaceId: ws, name: "huge", image: "img", gpuCount: 8 }),
      Code.ResourceExhausted,
      "no host with 8 free healthy GPU(s)",
    );
    assert.match(none.rawMessage, /the most free on one host is \d, \d free in all/);
    await expectCode(
      envs.createEnvironment({ workspaceId: ws, name: "a100", image: "img", gpuCount: 1, gpuModel: "NVIDIA A100-SXM4-80GB" }),
      Code.ResourceExhausted,
      "A100",
    );

    const capped = (await workspaces.createWorkspace({ name: "capped-team" })).workspace!.id;
    await workspaces.setResourceQuota({ quota: { workspaceId: capped, maxGpus: 1, maxEnvironments: 5 } });
    const first = await envs.createEnvironment({ workspaceId: capped, name: "one", image: "img", gpuCount: 1, requestId: "req-1" });
    const retried = await envs.createEnvironment({ workspaceId: capped, name: "one", image: "img", gpuCount: 1, requestId: "req-1" });
    assert.equal(retried.environment?.id, first.environment?.id, "same request id, same environment");
    await expectCode(
      envs.createEnvironment({ workspaceId: capped, name: "two", image: "img", gpuCount: 1 }),
      Code.ResourceExhausted,
      "max_gpus",
    );
    await expectCode(envs.createEnvironment({ workspaceId: capped, name: "one", image: "img" }), Code.AlreadyExists, "one");

    const bad = await expectCode(
      envs.createEnvironment({
        workspaceId: capped,
        name: "Bad Name",
        image: "",
        gpuCount: -1,
        env: { "1X": "y" },
        ports: [{ name: "p", containerPort: 70000 }],
        sshPublicKeys: ["not a key"],
      }),
      Code.InvalidArgument,
    );
    for (const field of ["name", "image", "gpu_count", "env.1X", "ports[0].container_port", "ssh_public_keys[0]"])
      assert.ok(bad.rawMessage.includes(field), `${field} in ${bad.rawMessage}`);
    const usage = (await workspaces.getUsage({ workspaceId: capped })).usage!;
    assert.equal(usage.environments, 1, "refused requests left nothing behind");
    assert.equal(usage.gpus, 1);
    // Give its GPU back, so later tests find the host as they expect.
    await envs.deleteEnvironment({ id: first.environment!.id });
    await eventually(
      "the environment gone",
      async () => (await envs.getEnvironment({ id: first.environment!.id }).catch(() => undefined)) === undefined,
      rounds,
    );
  });

  it("records FAILED with the reason and releases GPUs when the workload does not start", async () => {
    agent.behaviour = "fail";
    try {
      const env = (await envs.createEnvironment({ workspaceId: ws, name: "broken", image: "img", command: ["false"], gpuCount: 1 }))
        .environment!;
      const failed = await status(env.id, EnvironmentStatus.FAILED);
      assert.match(failed.statusMessage, /did not start: exited with code 3/);
      assert.deepEqual(failed.gpuIds, []);
      await envs.deleteEnvironment({ id: env.id });
    } finally {
      agent.behaviour = "run";
    }
  });

  it("marks environments of an OFFLINE host, and fails them only after the longer timeout", async () => {
    const { id: lonely, agent: lonelyAgent } = await newHost("flaky-host", 1, "NVIDIA L4");
    const env = (
      await envs.createEnvironment({ workspaceId: ws, name: "on-flaky", image: "img", command: ["x"], gpuCount: 1, gpuModel: "NVIDIA L4" })
    ).environment!;
    assert.equal(env.hostId, lonely);
    await status(env.id, EnvironmentStatus.RUNNING);
    await lonelyAgent.close();

    clock.advance(60_000); // past the 40 s grace: the host is OFFLINE (the other one keeps beating)
    await agent.beat();
    const marked = await eventually(
      "the offline mark",
      async () => {
        const e = (await envs.getEnvironment({ id: env.id })).environment!;
        return e.statusMessage.startsWith("host offline since") && e;
      },
      rounds,
    );
    assert.equal(marked.status, EnvironmentStatus.RUNNING, "a short outage does not destroy the environment");
    assert.equal(marked.gpuIds.length, 1);

    for (let i = 0; i < 10; i++) {
      clock.advance(30_000);
      await agent.beat();
      await server.app.maintain(); // its last-seen is written before the clock moves on
    }
    const failed = await status(env.id, EnvironmentStatus.FAILED);
    assert.match(failed.statusMessage, /offline for more than 300 s/);
    assert.deepEqual(failed.gpuIds, []);
  });

  it("clears the offline mark of a running environment once its host's agent is back", async () => {
    const { id: host, agent: first, token, gpus: hostGpus } = await newHost("blinking-host", 1, "NVIDIA L4");
    const env = (
      await envs.createEnvironment({
        workspaceId: ws,
        name: "on-blinking",
        image: "img",
        command: ["x"],
        gpuCount: 1,
        gpuModel: "NVIDIA L4",
      })
    ).environment!;
    assert.equal(env.hostId, host);
    await status(env.id, EnvironmentStatus.RUNNING);
    await first.close();
    clock.advance(60_000); // past the grace: OFFLINE
    await agent.beat();
    await eventually(
      "the offline mark",
      async () => (await envs.getEnvironment({ id: env.id })).environment!.statusMessage.startsWith("host offline since"),
      rounds,
    );
    // The agent returns still running it: nothing to run again, only the mark to take away.
    const back = new WorkloadAgent(server, token, host, hostGpus, new Map([[env.id, 1n]]));
    try {
      await back.welcome;
      const cleared = await eventually(
        "the mark cleared",
        async () => {
          const e = (await envs.getEnvironment({ id: env.id })).environment!;
          return e.statusMessage === "running" && e;
        },
        rounds,
      );
      assert.equal(cleared.status, EnvironmentStatus.RUNNING);
      assert.equal(runsOf(back, env.id).length, 0);
      await envs.deleteEnvironment({ id: env.id });
      await gone(env.id);
    } finally {
      await back.close();
    }
    await server.client(HostService).deleteHost({ id: host }); // the next tests' environments go elsewhere
  });

  it("stops an environment left idle: GPUs under the threshold and no port traffic for its idle minutes", async () => {
    const gpuEnv = (
      await envs.createEnvironment({ workspaceId: ws, name: "idle-gpu", image: "img", command: ["x"], gpuCount: 1, idleTimeoutMinutes: 1 })
    ).environment!;
    const webEnv = (
      await envs.createEnvironment({ workspaceId: ws, name: "idle-web", image: "img", command: ["x"], idleTimeoutMinutes: 1 })
    ).environment!;
    await status(gpuEnv.id, EnvironmentStatus.RUNNING);
    await status(webEnv.id, EnvironmentStatus.RUNNING);
    const g = (await gpus.getGpu({ id: gpuEnv.gpuIds[0]! })).gpu!;
    const busy = [{ uuid: g.uuid, index: g.index, util: 80 }];
    const idle = [{ uuid: g.uuid, index: g.index, util: 1 }];

    // 90 s of GPU use and port traffic: both stay up past their minute.
    for (let i = 0; i < 3; i++) {
      clock.advance(30_000);
      await agent.beat(busy, [webEnv.id]);
      await eventually(
        "the samples to land",
        async () => (await gpus.getGpu({ id: g.id })).gpu?.latestSample?.metrics?.gpuUtilizationPercent === 80,
        rounds,
      );
      await server.app.maintain();
    }
    assert.equal((await envs.getEnvironment({ id: gpuEnv.id })).environment?.status, EnvironmentStatus.RUNNING);
    assert.equal((await envs.getEnvironment({ id: webEnv.id })).environment?.status, EnvironmentStatus.RUNNING);

    // Then a quiet minute: both are stopped, with the reason.
    clock.advance(30_000);
    await agent.beat(idle);
    clock.advance(31_000);
    await agent.beat(idle);
    const stopped = await status(gpuEnv.id, EnvironmentStatus.STOPPED);
    assert.ok(
      stopped.transitions.some((t) => /idle for 1 min/.test(t.message)),
      JSON.stringify(stopped.transitions.map((t) => t.message)),
    );
    assert.deepEqual(stopped.gpuIds, []);
    await status(webEnv.id, EnvironmentStatus.STOPPED);
  });

  it("tails and follows logs until the environment ends", async () => {
    const env = (await envs.createEnvironment({ workspaceId: ws, name: "chatty", image: "img", command: ["x"] })).environment!;
    await status(env.id, EnvironmentStatus.RUNNING);
    agent.log(env.id, "line 1", "line 2", "line 3");
    await eventually(
      "stored lines",
      async () => {
        const lines: string[] = [];
        for await (const res of envs.streamLogs({ environmentId: env.id, tailLines: 2 })) lines.push(...res.lines.map((l) => l.text));
        return lines.join("|") === "line 2|line 3";
      },
      rounds,
    );

    const followed: string[] = [];
    const following = (async () => {
      for await (const res of envs.streamLogs({ environmentId: env.id, tailLines: 1, follow: true }))
        followed.push(...res.lines.map((l) => l.text));
    })();
    await eventually("the tail", async () => followed.length === 1, rounds);
    agent.log(env.id, "line 4");
    await eventually("the followed line", async () => followed.includes("line 4"), rounds);
    await envs.stopEnvironment({ id: env.id });
    await status(env.id, EnvironmentStatus.STOPPED);
    await following; // ends by itself with the environment
    assert.deepEqual(followed, ["line 3", "line 4"]);

    // Deleted, its log is archived to the object store and still readable.
    await envs.deleteEnvironment({ id: env.id });
    await eventually(
      "the environment to be gone",
      async () => (await envs.getEnvironment({ id: env.id }).catch(() => undefined)) === undefined,
      rounds,
    );
    const archived: string[] = [];
    for await (const res of envs.streamLogs({ environmentId: env.id, tailLines: 3, follow: true }))
      archived.push(...res.lines.map((l) => l.text));
    assert.deepEqual(archived, ["line 2", "line 3", "line 4"]);
    const outsider = (await workspaces.createWorkspace({ name: "log-outsider" })).workspace!.id;
    const peek = server.client(EnvironmentService, {
      token: (await workspaces.createApiToken({ workspaceId: outsider, name: "v", role: ApiTokenRole.VIEWER })).secret,
    });
    await expectCode(peek.streamLogs({ environmentId: env.id })[Symbol.asyncIterator]().next(), Code.NotFound);
  });

  it("watches: a late watcher gets the current state first, then changes", async () => {
    const env = (await envs.createEnvironment({ workspaceId: ws, name: "watched", image: "img", command: ["x"] })).environment!;
    await status(env.id, EnvironmentStatus.RUNNING);
    const abort = new AbortController();
    const events: [string, string][] = [];
    const watching = (async () => {
      for await (const ev of envs.watchEnvironments({ environmentId: env.id }, { signal: abort.signal })) {
        events.push([WatchEventType[ev.type], EnvironmentStatus[ev.environment!.status]]);
      }
    })().catch(() => undefined);
    await eventually("the initial event", async () => events.length > 0, rounds);
    await envs.stopEnvironment({ id: env.id });
    await eventually("the stop events", async () => events.some(([, s]) => s === "STOPPED"), rounds);
    abort.abort();
    await watching;
    assert.deepEqual(events.slice(0, 3), [
      ["INITIAL", "RUNNING"],
      ["MODIFIED", "STOPPING"],
      ["MODIFIED", "STOPPED"],
    ]);
  });

  it("deletes a workspace with environments only with force, through the normal environment path", async () => {
    const doomed = (await workspaces.createWorkspace({ name: "doomed-team" })).workspace!.id;
    const ids: string[] = [];
    for (const name of ["d1", "d2"])
      ids.push((await envs.createEnvironment({ workspaceId: doomed, name, image: "img", command: ["x"], gpuCount: 1 })).environment!.id);
    for (const id of ids) await status(id, EnvironmentStatus.RUNNING);
    await expectCode(workspaces.deleteWorkspace({ id: doomed }), Code.FailedPrecondition, "2 environment(s)");
    await workspaces.deleteWorkspace({ id: doomed, force: true });
    await expectCode(workspaces.getWorkspace({ id: doomed }), Code.NotFound);
    for (const id of ids) {
      assert.ok(
        agent.commands.some((c) => c.command.case === "removeEnvironment" && c.command.value.environmentId === id),
        "the agent removed its workload",
      );
      assert.ok(!agent.running.has(id));
    }
    const held = (await gpus.listGpus({ pageSize: 100 })).gpus.filter((g) => ids.includes(g.environmentId));
    assert.deepEqual(held, [], "their GPUs are free");
  });

  it("hides one workspace's environments from another's tokens", async () => {
    const env = (await envs.createEnvironment({ workspaceId: ws, name: "private", image: "img" })).environment!;
    const other = (await workspaces.createWorkspace({ name: "other-team" })).workspace!.id;
    const outsider = server.client(EnvironmentService, {
      token: (await workspaces.createApiToken({ workspaceId: other, name: "m", role: ApiTokenRole.MEMBER })).secret,
    });
    await expectCode(outsider.getEnvironment({ id: env.id }), Code.NotFound);
    await expectCode(outsider.stopEnvironment({ id: env.id }), Code.NotFound);
    await expectCode(outsider.streamLogs({ environmentId: env.id })[Symbol.asyncIterator]().next(), Code.NotFound);
    assert.deepEqual((await outsider.listEnvironments({})).environments, []);
    await expectCode(outsider.listEnvironments({ workspaceId: ws }), Code.PermissionDenied);
  });

  it("stops what the agent runs but should not, and runs again what it lost, when it reconnects", async () => {
    const env = (await envs.createEnvironment({ workspaceId: ws, name: "survivor", image: "img", command: ["x"] })).environment!;
    await status(env.id, EnvironmentStatus.RUNNING);
    // A new agent session for the host (the old one is fenced) that runs a stray workload and lost `survivor`.
    const stray = "11111111-2222-4333-8444-555555555555";
    const reconnected = new WorkloadAgent(
      server,
      hostAgentToken,
      hostId,
      [0, 1, 2, 3].map((i) => ({ index: i, uuid: `GPU-env-host-${i}` })),
      new Map([[stray, 1n]]),
    );
    await reconnected.welcome;
    await eventually(
      "the stray workload to be removed",
      async () => reconnected.commands.some((c) => c.command.case === "removeEnvironment" && c.command.value.environmentId === stray),
      rounds,
    );
    await eventually("the lost workload to be run again", async () => reconnected.running.has(env.id), rounds);
    await agent.close();
    agent = reconnected;
  });

  it("sends a stop or delete asked while the agent was away as soon as it is back, whatever backoff the vain tries built up", async () => {
    const model = "NVIDIA A100-SXM4-80GB";
    const away = await newHost("away-host", 2, model);
    const team = (await workspaces.createWorkspace({ name: "away-team" })).workspace!.id;
    const create = async (name: string) =>
      (await envs.createEnvironment({ workspaceId: team, name, image: "img", command: ["x"], gpuCount: 1, gpuModel: model })).environment!;
    const [toStop, toDelete] = [await create("to-stop"), await create("to-delete")];
    assert.deepEqual([toStop.hostId, toDelete.hostId], [away.id, away.id]);
    await status(toStop.id, EnvironmentStatus.RUNNING);
    await status(toDelete.id, EnvironmentStatus.RUNNING);

    // The agent goes away (its host rebooted: the workloads end with it), then both are asked for.
    await away.agent.close();
    await envs.stopEnvironment({ id: toStop.id });
    await envs.deleteEnvironment({ id: toDelete.id });
    // The reconciler tries to reach the agent, in vain, each time the backoff allows.
    for (const ms of [0, 2000, 4000, 8000]) {
      await agent.beat(); // the other host stays ONLINE
      clock.advance(ms);
      await server.app.maintain();
    }

    // Back, running nothing. The clock stands still from here: no backoff will ever end by itself.
    const back = new WorkloadAgent(
      server,
      away.token,
      away.id,
      [0, 1].map((i) => ({ index: i, uuid: `GPU-away-host-${i}`, model })),
    );
    await back.welcome;
    const stopped = await status(toStop.id, EnvironmentStatus.STOPPED);
    assert.deepEqual(stopped.gpuIds, []);
    await eventually(
      "the deleted one to be gone",
      async () => (await envs.getEnvironment({ id: toDelete.id }).catch(() => undefined)) === undefined,
      rounds,
    );
    assert.deepEqual(
      back.commands
        .map(
          (c) =>
            `${c.command.case}:${c.command.value && "environmentId" in c.command.value && c.command.value.environmentId === toStop.id ? "to-stop" : "to-delete"}`,
        )
        .sort(),
      ["removeEnvironment:to-delete", "stopEnvironment:to-stop"],
    );
    await back.close();
  });
  it("adds and removes ports of a RUNNING environment in place on a host running processes: PORT stays, no restart", async () => {
    const env = (
      await envs.createEnvironment({
        workspaceId: ws,
        name: "web-app",
        image: "img",
        command: ["sh", "-c", "exec python3 -m http.server $PORT"],
        ports: [{ name: "http", containerPort: 8000 }],
        gpuCount: 1,
        gpuModel: H100,
      })
    ).environment!;
    await status(env.id, EnvironmentStatus.RUNNING);
    assert.equal(runsOf(agent, env.id).at(-1)?.env.PORT, "8000");

    // "alt" sorts before "http": the first port, and PORT, must not change with it.
    const { portMapping: alt } = await envs.addPortMapping({ environmentId: env.id, port: { name: "alt", containerPort: 9001 } });
    assert.ok(alt!.hostPort >= 31000 && alt!.hostPort <= 31099);
    await eventually("the new port list sent", async () => runsOf(agent, env.id).length === 2, rounds);
    const added = runsOf(agent, env.id)[1]!;
    assert.equal(added.generation, 1n, "the same generation: the agent changes its forwarders in place");
    assert.deepEqual(
      added.ports.map((p) => [p.name, p.containerPort]),
      [
        ["http", 8000],
        ["alt", 9001],
      ],
    );
    assert.equal(added.env.PORT, "8000");
    let now = (await envs.getEnvironment({ id: env.id })).environment!;
    assert.equal(now.status, EnvironmentStatus.RUNNING);
    assert.deepEqual(
      now.transitions.map((t) => EnvironmentStatus[t.status]),
      ["PENDING", "CREATING", "RUNNING"],
      "never restarted",
    );
    assert.deepEqual(
      (await envs.listPortMappings({ environmentId: env.id })).portMappings.map((p) => p.name),
      ["alt", "http"],
    );

    // Removing the first port keeps PORT where it was.
    const http = now.portMappings.find((p) => p.name === "http")!;
    await envs.removePortMapping({ environmentId: env.id, portMappingId: http.id });
    await eventually("the shorter port list sent", async () => runsOf(agent, env.id).length === 3, rounds);
    const removed = runsOf(agent, env.id)[2]!;
    assert.equal(removed.generation, 1n);
    assert.deepEqual(
      removed.ports.map((p) => p.name),
      ["alt"],
    );
    assert.equal(removed.env.PORT, "8000");
    assert.equal(removed.env.PORT_HTTP, undefined);
    now = (await envs.getEnvironment({ id: env.id })).environment!;
    assert.equal(now.status, EnvironmentStatus.RUNNING);
    assert.deepEqual(
      now.ports.map((p) => p.name),
      ["alt"],
    );
    // Added again, it goes last: the first port stays the first.
    await envs.addPortMapping({ environmentId: env.id, port: { name: "http", containerPort: 8000 } });
    await eventually("the port list sent", async () => runsOf(agent, env.id).length === 4, rounds);
    assert.deepEqual(
      runsOf(agent, env.id)[3]!.ports.map((p) => p.name),
      ["alt", "http"],
    );

    await expectCode(
      envs.addPortMapping({ environmentId: env.id, port: { name: "alt", containerPort: 9002 } }),
      Code.AlreadyExists,
      '"alt" (container port 9001)',
    );
    await expectCode(
      envs.addPortMapping({ environmentId: env.id, port: { name: "Bad", containerPort: 0 }, hostPort: 80 }),
      Code.InvalidArgument,
      "port.name",
      "port.container_port",
      "host_port: must be in 31000-31099",
    );
    await expectCode(
      envs.removePortMapping({ environmentId: env.id, portMappingId: "11111111-2222-4333-8444-555555555555" }),
      Code.NotFound,
      "port mapping",
    );
    await expectCode(envs.removePortMapping({ environmentId: env.id, portMappingId: "nope" }), Code.InvalidArgument, "port_mapping_id");
    await envs.deleteEnvironment({ id: env.id });
    await gone(env.id);
  });

  it("restarts the workload for a port change on a host running containers, with PORT unchanged, also while it starts", async () => {
    const boxed = await newHost("container-host", 1, "NVIDIA L40S", { containersSupported: true });
    try {
      const env = (
        await envs.createEnvironment({
          workspaceId: ws,
          name: "boxed",
          image: "python:3.12",
          gpuCount: 1,
          gpuModel: "NVIDIA L40S",
          ports: [{ name: "http", containerPort: 8000 }],
        })
      ).environment!;
      assert.equal(env.hostId, boxed.id);
      await status(env.id, EnvironmentStatus.RUNNING);

      boxed.agent.behaviour = "ignore"; // the new generation does not come up: the environment stays STARTING
      await envs.addPortMapping({ environmentId: env.id, port: { name: "alt", containerPort: 9001 } });
      const restarting = (await envs.getEnvironment({ id: env.id })).environment!;
      assert.equal(restarting.status, EnvironmentStatus.STARTING);
      assert.equal(restarting.statusMessage, "restarting the workload for the port change (port alt added)");
      await eventually("generation 2 sent", async () => runsOf(boxed.agent, env.id).some((r) => r.generation === 2n), rounds);

      // Still STARTING: a port change is allowed, and replaces the generation that did not come up.
      boxed.agent.behaviour = "run";
      const http = restarting.portMappings.find((p) => p.name === "http")!;
      await envs.removePortMapping({ environmentId: env.id, portMappingId: http.id });
      const running = await status(env.id, EnvironmentStatus.RUNNING);
      assert.ok(running.transitions.some((t) => t.message === "restarting the workload for the port change (port http removed)"));
      const last = runsOf(boxed.agent, env.id).at(-1)!;
      assert.equal(last.generation, 3n);
      assert.deepEqual(
        last.ports.map((p) => [p.name, p.containerPort]),
        [["alt", 9001]],
      );
      assert.equal(last.env.PORT, "8000", "PORT stays the first port the environment had");
      await envs.deleteEnvironment({ id: env.id });
      await gone(env.id);
    } finally {
      await boxed.agent.close();
    }
  });

  it("stops and deletes the environments of an OFFLINE host at once, freeing GPUs and ports, so the host can be deleted", async () => {
    const hosts = server.client(HostService);
    const model = "NVIDIA B200";
    const dead = await newHost("dead-host", 2, model);
    const team = (await workspaces.createWorkspace({ name: "dead-team" })).workspace!.id;
    const create = async (name: string) =>
      (
        await envs.createEnvironment({
          workspaceId: team,
          name,
          image: "img",
          command: ["x"],
          gpuCount: 1,
          gpuModel: model,
          ports: [{ name: "ssh", containerPort: 22 }],
        })
      ).environment!;
    const [toDelete, toStop] = [await create("dead-delete"), await create("dead-stop")];
    await status(toDelete.id, EnvironmentStatus.RUNNING);
    await status(toStop.id, EnvironmentStatus.RUNNING);

    await dead.agent.close();
    await passGrace();
    assert.equal((await hosts.getHost({ id: dead.id })).host?.status, HostStatus.OFFLINE);
    await expectCode(hosts.deleteHost({ id: dead.id }), Code.FailedPrecondition, "stop or delete them first (it is OFFLINE");

    // The clock stands still from here: nothing waits for ENVIRONMENT_LOST_HOST_SECONDS.
    const started = Date.now();
    await envs.deleteEnvironment({ id: toDelete.id });
    await envs.stopEnvironment({ id: toStop.id });
    await gone(toDelete.id);
    const stopped = await status(toStop.id, EnvironmentStatus.STOPPED);
    assert.ok(Date.now() - started < 5000, `took ${Date.now() - started} ms`);
    assert.match(stopped.statusMessage, /stopped while host "dead-host" is unreachable/);
    assert.deepEqual(stopped.gpuIds, []);
    assert.deepEqual(
      stopped.portMappings.map((p) => [p.name, p.hostPort]),
      [["ssh", 0]],
    );
    const held = (await gpus.listGpus({ hostId: dead.id })).gpus.map((g) => [g.holder, g.environmentId]);
    assert.deepEqual(
      held,
      [
        ["", ""],
        ["", ""],
      ],
      "its GPUs are free",
    );
    const [ports] = await server.app.orm.em
      .fork()
      .getConnection()
      .execute<{ n: number }[]>("select count(*)::int as n from port_mappings where host_id = ?", [dead.id]);
    assert.equal(ports!.n, 0, "its host ports are free");

    await hosts.deleteHost({ id: dead.id });
    await expectCode(hosts.getHost({ id: dead.id }), Code.NotFound);
    // The stopped environment lost its host (and the volume there); it can still be deleted.
    await envs.deleteEnvironment({ id: toStop.id });
    await gone(toStop.id);
  });

  it("deletes a workspace with force at once when its environments are on an OFFLINE host; the agent back removes what it still runs", async () => {
    const model = "NVIDIA GH200";
    const dead = await newHost("lost-host", 2, model);
    const team = (await workspaces.createWorkspace({ name: "lost-team" })).workspace!.id;
    const create = async (name: string) =>
      (await envs.createEnvironment({ workspaceId: team, name, image: "img", command: ["x"], gpuCount: 1, gpuModel: model })).environment!;
    const [kept, other] = [await create("lost-1"), await create("lost-2")];
    await status(kept.id, EnvironmentStatus.RUNNING);
    await status(other.id, EnvironmentStatus.RUNNING);
    await envs.stopEnvironment({ id: other.id });
    await status(other.id, EnvironmentStatus.STOPPED);

    await dead.agent.close();
    await passGrace();
    const started = Date.now();
    await workspaces.deleteWorkspace({ id: team, force: true });
    assert.ok(Date.now() - started < 5000, `took ${Date.now() - started} ms`);
    await expectCode(workspaces.getWorkspace({ id: team }), Code.NotFound);
    await expectCode(envs.getEnvironment({ id: kept.id }), Code.NotFound);
    assert.deepEqual(
      (await gpus.listGpus({ hostId: dead.id })).gpus.map((g) => g.environmentId),
      ["", ""],
    );

    // The host returns still running the deleted environment: it is told to remove it.
    const back = new WorkloadAgent(server, dead.token, dead.id, dead.gpus, new Map([[kept.id, 1n]]));
    try {
      await back.welcome;
      await eventually(
        "the remove command",
        async () => back.commands.some((c) => c.command.case === "removeEnvironment" && c.command.value.environmentId === kept.id),
        rounds,
      );
      assert.ok(!back.running.has(kept.id));
    } finally {
      await back.close();
    }
  });

  it("counts each volume (10 GiB unless sized) in the storage quota, and shows what volumes use as their agents report it", async () => {
    const GiB = 1n << 30n;
    const team = (await workspaces.createWorkspace({ name: "storage-team" })).workspace!.id;
    await workspaces.setResourceQuota({ quota: { workspaceId: team, maxStorageBytes: 15n * GiB } });
    const a = (
      await envs.createEnvironment({ workspaceId: team, name: "vol-a", image: "img", command: ["x"], gpuCount: 1, gpuModel: H100 })
    ).environment!;
    assert.equal(a.storageBytes, 10n * GiB, "the documented default");
    assert.equal((await workspaces.getUsage({ workspaceId: team })).usage?.storageBytes, 10n * GiB);
    await expectCode(
      envs.createEnvironment({ workspaceId: team, name: "vol-big", image: "img", command: ["x"] }),
      Code.ResourceExhausted,
      "quota exceeded: max_storage_bytes is 16106127360, 10737418240 in use, 10737418240 more requested",
    );
    const other = await newHost("volume-host", 1, "NVIDIA L4");
    const b = (
      await envs.createEnvironment({
        workspaceId: team,
        name: "vol-b",
        image: "img",
        command: ["x"],
        storageBytes: 5n * GiB,
        gpuCount: 1,
        gpuModel: "NVIDIA L4",
      })
    ).environment!;
    assert.equal(b.hostId, other.id);
    await status(a.id, EnvironmentStatus.RUNNING);
    await status(b.id, EnvironmentStatus.RUNNING);
    assert.equal(a.hostId, hostId);

    // Each agent speaks for its own host's volumes only; unknown ids are ignored.
    await agent.beat(
      [],
      [],
      [
        { environmentId: a.id, usedBytes: 123n },
        { environmentId: b.id, usedBytes: 999n },
        { environmentId: "11111111-2222-4333-8444-555555555555", usedBytes: 5n },
        { environmentId: "not-an-id", usedBytes: 5n },
      ],
    );
    await other.agent.beat([], [], [{ environmentId: b.id, usedBytes: 77n }]);
    await server.app.maintain();
    assert.equal((await envs.getEnvironment({ id: a.id })).environment?.storageUsedBytes, 123n);
    assert.equal((await envs.getEnvironment({ id: b.id })).environment?.storageUsedBytes, 77n);
    const usage = (await workspaces.getUsage({ workspaceId: team })).usage!;
    assert.equal(usage.volumeUsedBytes, 200n);
    assert.equal(usage.storageBytes, 15n * GiB, "the quota counts sizes, not use");
    // A heartbeat without figures keeps the last ones; a new figure replaces it.
    await agent.beat();
    await agent.beat([], [], [{ environmentId: a.id, usedBytes: 0n }]);
    await server.app.maintain();
    const listed = (await envs.listEnvironments({ workspaceId: team })).environments;
    assert.deepEqual(listed.map((e) => [e.name, e.storageUsedBytes]).sort(), [
      ["vol-a", 0n],
      ["vol-b", 77n],
    ]);

    await workspaces.deleteWorkspace({ id: team, force: true });
    await other.agent.close();
  });

  it("places nothing on a host whose agent says it cannot run environments, says why, and uses it again after a hello without a reason", async () => {
    const hosts = server.client(HostService);
    const model = "NVIDIA RTX PRO 6000";
    const reason = "no container engine answers (docker, podman) and process mode was not asked for (--process-mode)";
    const team = (await workspaces.createWorkspace({ name: "bare-team" })).workspace!.id;
    const create = async (name: string) =>
      (await envs.createEnvironment({ workspaceId: team, name, image: "img", command: ["x"], gpuCount: 1, gpuModel: model })).environment!;
    const bare = await newHost("bare-host", 1, model, { runtimeUnavailableReason: reason });

    // Listed with what its agent said; it stays ONLINE and schedulable (not cordoned).
    const shown = (await hosts.getHost({ id: bare.id })).host!;
    assert.deepEqual(
      [shown.status, shown.schedulable, shown.runtimeUnavailableReason, shown.statusMessage],
      [HostStatus.ONLINE, true, reason, `cannot run environments: ${reason}`],
    );
    const listed = (await hosts.listHosts({ pageSize: 1000 })).hosts;
    assert.equal(listed.find((h) => h.id === bare.id)?.runtimeUnavailableReason, reason);
    assert.equal(listed.find((h) => h.id === hostId)?.runtimeUnavailableReason, "", "the other hosts can");

    // The only host with the model: refused, naming the reason; nothing was held or sent.
    const refused = await expectCode(create("on-bare"), Code.ResourceExhausted, `; 1 host cannot run environments: ${reason}`);
    assert.match(
      refused.rawMessage,
      /^no host with 1 free healthy GPU\(s\) of model "NVIDIA RTX PRO 6000" .*: the most free on one host is 0, 0 free in all;/,
    );
    assert.equal((await workspaces.getUsage({ workspaceId: team })).usage?.environments, 0);
    assert.equal(bare.agent.commands.length, 0);

    // Another host that fits takes it.
    const boxed = await newHost("boxed-host", 1, model, { containersSupported: true });
    const elsewhere = await create("on-boxed");
    assert.equal(elsewhere.hostId, boxed.id);
    await status(elsewhere.id, EnvironmentStatus.RUNNING);

    // A later hello without a reason (a container engine came up): the host takes environments again.
    await bare.agent.close();
    const fixed = new WorkloadAgent(server, bare.token, bare.id, bare.gpus, new Map(), { containersSupported: true });
    await fixed.welcome;
    const cleared = (await hosts.getHost({ id: bare.id })).host!;
    assert.deepEqual([cleared.runtimeUnavailableReason, cleared.statusMessage], ["", ""]);
    const onBare = await create("on-bare");
    assert.equal(onBare.hostId, bare.id);
    await status(onBare.id, EnvironmentStatus.RUNNING);

    // The agent loses its engine again: what runs there is left alone, but it is not started there again.
    await fixed.close();
    const lost = "podman: cannot connect to the socket";
    const again = new WorkloadAgent(server, bare.token, bare.id, bare.gpus, new Map(fixed.running), { runtimeUnavailableReason: lost });
    await again.welcome;
    await server.app.maintain();
    assert.equal((await envs.getEnvironment({ id: onBare.id })).environment?.status, EnvironmentStatus.RUNNING);
    assert.equal(runsOf(again, onBare.id).length, 0, "the running workload was not touched");
    await envs.stopEnvironment({ id: onBare.id });
    await status(onBare.id, EnvironmentStatus.STOPPED);
    await expectCode(
      envs.startEnvironment({ id: onBare.id }),
      Code.ResourceExhausted,
      `host ${bare.id}, where the environment's volume is, cannot run environments: ${lost}`,
    );

    await workspaces.deleteWorkspace({ id: team, force: true });
    await again.close();
    await boxed.agent.close();
  });
});
