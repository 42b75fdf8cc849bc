import { strict as assert } from "node:assert";
import { spawn, type ChildProcess } from "node:child_process";
import { readFile, rm } from "node:fs/promises";
import path from "node:path";
import { EnvironmentService, EnvironmentStatus } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService, type Gpu } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { killUid } from "../../agent/src/process-users.js";
import { systemClock } from "../../src/platform/clock.js";
import { agentArgv, agentTempDir, ROOT, simulatedAgentFlags } from "../support/child.js";
import { eventually } from "../support/eventually.js";
import { startTestServer, type TestServer } from "../support/server.js";

const PROFILE = "1g.10gb";
/**
 * Workload uids of this file's agent (it confines each environment to one when run as root): a range
 * no other test uses, so that a parallel run's agent never takes (or kills) the same uid.
 */
const WORKLOAD_UIDS = "231020-231029";

describe("e2e: MIG slices of simulated GPUs, run for real by the agent in process mode", function () {
  this.timeout(60_000);
  let server: TestServer;
  let dataDir: string;
  let agent: ChildProcess | undefined;
  let agentErr = "";
  /** Environments not yet deleted, removed in after() when the test stops half way. */
  const leftover = new Set<string>();

  before(async () => {
    dataDir = await agentTempDir("remotegpu-mig-agent-");
    server = await startTestServer({ clock: systemClock, env: { HEARTBEAT_INTERVAL_SECONDS: "1", HOST_GRACE_SECONDS: "5" } });
  });
  after(async () => {
    const envs = server.client(EnvironmentService);
    for (const id of leftover) {
      await envs.deleteEnvironment({ id }).catch(() => undefined);
      await eventually(`${id} deleted`, async () => (await envs.getEnvironment({ id }).catch(() => undefined)) === undefined, 10_000).catch(
        () => undefined,
      );
    }
    agent?.kill("SIGKILL");
    // What a stuck agent could not remove: its workloads' processes, by their uids.
    const uids = JSON.parse(await readFile(path.join(dataDir, "workload-uids.json"), "utf8").catch(() => "{}")) as Record<string, number>;
    for (const uid of Object.values(uids)) await killUid(uid);
    await server.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  it("lists 14 slices of two GPUs, runs two environments on two slices of one GPU, each seeing its own MIG UUID, and frees them on delete", async () => {
    const { host, agentToken } = await server.client(HostService).createHost({ name: "mig-agent", address: "127.0.0.1" });
    const flags = [
      ...simulatedAgentFlags({ server: server.baseUrl, hostId: host!.id, token: agentToken, gpus: 2, dataDir }),
      "--simulate-mig",
      `${PROFILE}:7`,
      "--workload-uids",
      WORKLOAD_UIDS,
    ];
    agent = spawn(process.execPath, agentArgv(flags), { cwd: ROOT, stdio: ["ignore", "ignore", "pipe"] });
    agent.stderr!.setEncoding("utf8").on("data", (c: string) => (agentErr += c));
    const gpus = server.client(GpuService);
    const freeSlices = async () => (await gpus.listGpus({ hostId: host!.id, freeOnly: true, migProfile: PROFILE })).gpus;
    await eventually("the agent's 14 free slices", async () => (await freeSlices()).length === 14, 15_000).catch((err: Error) => {
      throw new Error(`${err.message}\n${agentErr.slice(-2000)}`);
    });

    // 1. Two GPUs in MIG mode, seven 1g.10gb slices each, known by their MIG UUIDs.
    const listed = (await gpus.listGpus({ hostId: host!.id })).gpus;
    const parents = listed.filter((g) => g.mig === undefined);
    const slices = listed.filter((g) => g.mig !== undefined);
    assert.equal(parents.length, 2, listed.map((g) => g.uuid).join(" "));
    assert.ok(
      parents.every((p) => p.migEnabled && p.uuid.startsWith("GPU-")),
      "both GPUs are in MIG mode",
    );
    assert.equal(slices.length, 14);
    for (const s of slices) {
      const parent = parents.find((p) => p.id === s.mig!.parentId);
      assert.ok(parent, `${s.uuid}'s parent ${s.mig!.parentId} is one of the host's GPUs`);
      assert.equal(s.mig!.profile, PROFILE);
      assert.equal(s.model, `${parent.model} MIG ${PROFILE}`);
      assert.match(s.uuid, /^MIG-[0-9a-f-]{36}$/);
      assert.equal(s.migEnabled, false);
    }
    for (const p of parents) assert.equal(slices.filter((s) => s.mig!.parentId === p.id).length, 7, `seven slices of ${p.uuid}`);
    assert.equal(new Set(slices.map((s) => s.uuid)).size, 14, "every slice has a UUID of its own");
    assert.deepEqual(
      (await freeSlices()).map((g) => g.id).sort(),
      slices.map((s) => s.id).sort(),
      "every slice is free, and a GPU in MIG mode never is itself",
    );
    assert.equal((await gpus.listGpus({ hostId: host!.id, freeOnly: true })).gpus.length, 14, "no whole GPU is free");

    // 2. Two environments of one slice each, created one after the other: best fit packs them onto one GPU.
    const workspaceId = (await server.client(WorkspaceService).createWorkspace({ name: "mig-team" })).workspace!.id;
    const envs = server.client(EnvironmentService);
    const running = async (name: string) => {
      const created = (
        await envs.createEnvironment({
          workspaceId,
          name,
          image: "x", // process mode runs the command on the host
          command: ["sh", "-c", 'echo "nv=$NVIDIA_VISIBLE_DEVICES cuda=$CUDA_VISIBLE_DEVICES"; exec sleep 600'],
          gpuCount: 1,
          migProfile: PROFILE,
        })
      ).environment!;
      leftover.add(created.id);
      let last = "";
      return eventually(
        `${name} RUNNING`,
        async () => {
          const e = (await envs.getEnvironment({ id: created.id })).environment!;
          last = `${EnvironmentStatus[e.status]} ${e.statusMessage}`;
          return e.status === EnvironmentStatus.RUNNING && e;
        },
        15_000,
      ).catch((err: Error) => {
        throw new Error(`${err.message}; last: ${last}\n${agentErr.slice(-2000)}`);
      });
    };
    const first = await running("first");
    const second = await running("second");
    const held = (e: { name: string; gpuIds: string[] }): Gpu => {
      const slice = e.gpuIds.length === 1 ? slices.find((s) => s.id === e.gpuIds[0]) : undefined;
      assert.ok(slice, `${e.name} holds one of the listed slices, not ${e.gpuIds.join(", ")}`);
      return slice;
    };
    const [a, b] = [held(first), held(second)];
    assert.equal(first.migProfile, PROFILE);
    assert.notEqual(a.id, b.id, "two different slices");
    assert.equal(a.mig!.parentId, b.mig!.parentId, "slices of the same GPU");
    for (const [e, slice] of [
      [first, a],
      [second, b],
    ] as const) {
      const gpu = (await gpus.getGpu({ id: slice.id })).gpu!;
      assert.equal(gpu.environmentId, e.id, `${slice.uuid} is held by ${e.name}`);
      const line = await eventually(
        `${e.name}'s output`,
        async () => {
          for await (const r of envs.streamLogs({ environmentId: e.id, tailLines: 100 }))
            for (const l of r.lines) if (l.text.startsWith("nv=")) return l.text;
          return undefined;
        },
        10_000,
      );
      assert.equal(line, `nv=${slice.uuid} cuda=${slice.uuid}`, `${e.name} sees exactly its slice`);
    }
    assert.equal((await freeSlices()).length, 12);

    // 3. Deleted, they give their slices back.
    for (const e of [first, second]) {
      await envs.deleteEnvironment({ id: e.id });
      await eventually(
        `${e.name} gone`,
        async () => (await envs.getEnvironment({ id: e.id }).catch(() => undefined)) === undefined,
        10_000,
      );
      leftover.delete(e.id);
    }
    await eventually("14 free slices again", async () => (await freeSlices()).length === 14, 10_000);

    const exited = new Promise((resolve) => agent!.once("exit", resolve));
    agent.kill("SIGTERM");
    assert.equal(await exited, 0, agentErr.slice(-2000));
    agent = undefined;
  });
});
