// A request id (idempotency key) answers the same request with the first call's environment, and
// refuses another request under it: returning the old environment would hide the caller's mistake.
import { strict as assert } from "node:assert";
import { Code } from "@connectrpc/connect";
import { ErrorInfoSchema, PreconditionFailureSchema } from "../../gen/google/rpc/error_details_pb.js";
import { EnvironmentService, PortProtocol } from "../../gen/remotegpu/v1/environment_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { DEFAULT_STORAGE_BYTES } from "../../src/environment/environment.js";
import { requestHash, type EnvironmentInput } from "../../src/environment/environment-manager.js";
import { ManualClock } from "../../src/platform/clock.js";
import { expectCode } from "../support/expect.js";
import { startTestServer, type TestServer } from "../support/server.js";
import { WorkloadAgent } from "../support/workload-agent.js";

describe("CreateEnvironment request ids", () => {
  let server: TestServer;
  let agent: WorkloadAgent;
  let workspaceId: string;

  before(async () => {
    server = await startTestServer({ clock: new ManualClock(new Date("2026-12-01T00:00:00Z")) });
    const { host, agentToken } = await server.client(HostService).createHost({ name: "idem-host", address: "10.1.0.9" });
    agent = new WorkloadAgent(
      server,
      agentToken,
      host!.id,
      [0, 1, 2, 3].map((i) => ({ index: i, uuid: `GPU-idem-${i}` })),
    );
    await agent.welcome;
    workspaceId = (await server.client(WorkspaceService).createWorkspace({ name: "idem" })).workspace!.id;
  });
  after(async () => {
    await agent?.close();
    await server?.close();
  });

  it("answers the same request again with the first environment: env order and spelled-out defaults do not count", async () => {
    const envs = server.client(EnvironmentService);
    const request = {
      workspaceId,
      name: "same",
      image: "img",
      gpuCount: 1,
      env: { A: "1", B: "2" },
      ports: [{ name: "web", containerPort: 8080, protocol: PortProtocol.HTTP }],
      requestId: "same-1",
    };
    const first = await envs.createEnvironment(request);
    const again = await envs.createEnvironment({ ...request, env: { B: "2", A: "1" }, storageBytes: BigInt(DEFAULT_STORAGE_BYTES) });
    assert.equal(again.environment!.id, first.environment!.id);
  });

  it("refuses the same request id with a different request, naming the key, on every protocol", async () => {
    const request = { workspaceId, name: "first", image: "img:1", gpuCount: 1, requestId: "key-7" };
    const first = await server.client(EnvironmentService).createEnvironment(request);
    for (const protocol of ["connect", "grpc", "grpc-web"] as const) {
      const envs = server.client(EnvironmentService, { protocol });
      const err = await expectCode(
        envs.createEnvironment({ ...request, image: "img:2" }),
        Code.FailedPrecondition,
        'request_id "key-7"',
        first.environment!.id,
      );
      const [info] = err.findDetails(ErrorInfoSchema);
      assert.equal(info!.reason, "REQUEST_ID_REUSED");
      assert.deepEqual({ ...info!.metadata }, { request_id: "key-7", existing_id: first.environment!.id });
      const [failure] = err.findDetails(PreconditionFailureSchema);
      assert.deepEqual(
        failure!.violations.map((v) => [v.type, v.subject]),
        [["REQUEST_ID", "key-7"]],
      );
    }
    // Nothing new was made; the first request still gets its environment.
    const envs = server.client(EnvironmentService);
    const { environments } = await envs.listEnvironments({ workspaceId });
    assert.equal(environments.filter((e) => e.name === "first").length, 1);
    assert.equal((await envs.createEnvironment(request)).environment!.id, first.environment!.id);
  });

  it("hashes what the caller asked for: map order and the id itself do not count, list order does", () => {
    const base: EnvironmentInput = {
      workspaceId: "w",
      name: "n",
      image: "i",
      command: [],
      args: ["a", "b"],
      env: { A: "1", B: "2" },
      gpuCount: 1,
      gpuModel: "",
      migProfile: "",
      cpuMillicores: 0,
      memoryBytes: 0,
      storageBytes: 10,
      ports: [],
      sshPublicKeys: [],
      idleTimeoutMinutes: 0,
      requestId: "r",
    };
    assert.equal(requestHash(base), requestHash({ ...base, env: { B: "2", A: "1" }, requestId: "other" }));
    assert.notEqual(requestHash(base), requestHash({ ...base, args: ["b", "a"] }));
    assert.notEqual(requestHash(base), requestHash({ ...base, gpuCount: 2 }));
    assert.notEqual(requestHash(base), requestHash({ ...base, env: { A: "1" } }));
  });
});
