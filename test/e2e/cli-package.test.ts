import { strict as assert } from "node:assert";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { promisify } from "node:util";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { packAndInstall, type PackedInstall } from "../support/pack.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

const run = promisify(execFile);

/** What only the server needs (and tsx, for running from sources): none of it may come with the CLI. */
const SERVER_PACKAGES = ["@mikro-orm/core", "@mikro-orm/postgresql", "pg", "@aws-sdk/client-s3", "@kubernetes/client-node", "ioredis"];

/**
 * The CLI as an operator gets it: `npm pack` of the SDK and the CLI, both tarballs installed into an
 * empty project, and its `remotegpu` bin run against a live server.
 */
describe("e2e: @remotegpu/cli as a package", function () {
  this.timeout(180_000);
  let packed: PackedInstall;
  let server: TestServer;

  before(async () => {
    packed = await packAndInstall(["sdk", "cli"]);
    server = await startTestServer();
    await server.client(HostService).createHost({ name: "packed-node", address: "10.0.0.7" });
    const { workspace } = await server.client(WorkspaceService).createWorkspace({ name: "packed-team" });
    await server.client(WorkspaceService).setResourceQuota({ quota: { workspaceId: workspace!.id, maxGpus: 8 } });
  });
  after(async () => {
    await server?.close();
    await packed?.cleanup();
  });

  /** The installed bin, run as a program (its shebang picks node), from outside the repository. */
  const remotegpu = (args: string[]) => {
    const env = { ...process.env, REMOTEGPU_URL: server.baseUrl, REMOTEGPU_TOKEN: ADMIN_TOKEN };
    return run(packed.bin("remotegpu"), args, { cwd: packed.project, env });
  };

  it("packs only its build and installs without anything of the server", () => {
    const files = packed.files.get("@remotegpu/cli")!;
    assert.ok(files.includes("dist/main.js"), files.join(", "));
    assert.ok(
      files.every((f) => f.startsWith("dist/") || f === "package.json" || f === "README.md"),
      files.join(", "),
    );
    const installed = [...SERVER_PACKAGES, "tsx"].filter((name) => existsSync(packed.installed(name)));
    assert.deepEqual(installed, [], "server dependencies installed with the CLI");
    assert.ok(existsSync(packed.installed("@remotegpu/sdk")), "the SDK comes from its tarball");
  });

  it("runs `remotegpu --json hosts` and `remotegpu usage` against a live server", async () => {
    const hosts = JSON.parse((await remotegpu(["--json", "hosts"])).stdout) as { name: string; status: string }[];
    assert.deepEqual(
      hosts.map((h) => [h.name, h.status]),
      [["packed-node", "OFFLINE"]],
    );
    const { stdout } = await remotegpu(["usage", "packed-team"]);
    assert.match(stdout, /^workspace packed-team \(/);
    assert.match(stdout, /^gpus +0 \/ 8 +0%$/m);
  });

  it("reports a server error as the CLI does from a checkout", async () => {
    const failed = await remotegpu(["cordon", "no-such-node"]).then(
      () => assert.fail("exit 0"),
      (err: { code: number; stderr: string }) => err,
    );
    assert.equal(failed.code, 1);
    assert.equal(failed.stderr, 'remotegpu: not_found: no host named "no-such-node"\n');
  });
});
