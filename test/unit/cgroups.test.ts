import { strict as assert } from "node:assert";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Cgroups, nvidiaDeviceMinors } from "../../agent/src/cgroups.js";

// The v2 layout cannot be tried for real on these machines (their controllers sit on v1, which
// test/integration/agent-isolation.test.ts runs against), so it is checked here on a directory laid
// out as cgroupfs would be: what the agent moves, enables and writes.
describe("unit: agent cgroups", () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), "rgpu-cgfs-"));
  });
  afterEach(() => rm(root, { recursive: true, force: true }));

  async function v2Unit(controllers: string, procs: string): Promise<string> {
    await writeFile(path.join(root, "cgroup.controllers"), "cpuset cpu io memory pids\n");
    const unit = path.join(root, "system.slice", "remotegpu-agent.service");
    await mkdir(unit, { recursive: true });
    await writeFile(path.join(unit, "cgroup.controllers"), controllers);
    await writeFile(path.join(unit, "cgroup.procs"), procs);
    await writeFile(path.join(unit, "cgroup.subtree_control"), "");
    return unit;
  }

  it("v2: in systemd's delegated subgroup, enables cpu, memory and pids beside it and writes each limit", async () => {
    const unit = await v2Unit("cpu io memory pids\n", "");
    const cgroups = await Cgroups.detect(root, "0::/system.slice/remotegpu-agent.service/remotegpu-agent\n");
    assert.ok(cgroups instanceof Cgroups, String(cgroups));
    assert.equal(cgroups.version, 2);
    assert.equal(cgroups.devices, false, "v2 cannot fence GPUs by writing files");
    assert.equal(await readFile(path.join(unit, "cgroup.subtree_control"), "utf8"), "+cpu +memory +pids");
    assert.equal(await readFile(path.join(unit, "remotegpu", "cgroup.subtree_control"), "utf8"), "+cpu +memory +pids");

    await cgroups.create("env-1", { cpuMillicores: 1500, memoryBytes: 2 ** 30, pids: 64, denyDevices: ["195:1"] });
    const dir = path.join(unit, "remotegpu", "env-1");
    assert.equal(await readFile(path.join(dir, "cpu.max"), "utf8"), "150000 100000");
    assert.equal(await readFile(path.join(dir, "memory.max"), "utf8"), String(2 ** 30));
    assert.equal(await readFile(path.join(dir, "pids.max"), "utf8"), "64");
    await cgroups.enter("env-1", 777);
    assert.deepEqual(await cgroups.pids("env-1"), [777]);
  });

  it("v2: outside a delegated subgroup (a login session, an older systemd) uses no cgroups and says why", async () => {
    await v2Unit("cpu io memory pids\n", "4242\n");
    const why = await Cgroups.detect(root, "0::/user.slice/user-0.slice/session-3.scope\n");
    assert.match(String(why), /not in a delegated subgroup "remotegpu-agent".*DelegateSubgroup/);
    const unit = path.join(root, "system.slice", "remotegpu-agent.service");
    assert.equal(await readFile(path.join(unit, "cgroup.procs"), "utf8"), "4242\n", "nothing was moved");
  });

  it("v2: says which controllers were not delegated", async () => {
    await v2Unit("cpu io\n", "");
    const why = await Cgroups.detect(root, "0::/system.slice/remotegpu-agent.service/remotegpu-agent\n");
    assert.match(String(why), /controllers memory, pids not delegated .*Delegate=cpu memory pids/);
  });

  it("v1: a hierarchy per controller, under the agent's own cgroup in each; devices optional", async () => {
    for (const m of ["cpu,cpuacct", "memory", "pids"]) await mkdir(path.join(root, m));
    const self = "5:pids:/x\n4:memory:/y\n3:cpu,cpuacct:/\n0::/\n";
    const cgroups = await Cgroups.detect(root, self);
    assert.ok(cgroups instanceof Cgroups, String(cgroups));
    assert.equal(cgroups.version, 1);
    assert.equal(cgroups.devices, false);
    for (const dir of ["cpu,cpuacct/remotegpu", "memory/y/remotegpu", "pids/x/remotegpu"])
      assert.ok((await stat(path.join(root, dir))).isDirectory(), dir);
    await cgroups.create("env-2", { cpuMillicores: 250, pids: 10, denyDevices: [] });
    assert.equal(await readFile(path.join(root, "cpu,cpuacct", "remotegpu", "env-2", "cpu.cfs_quota_us"), "utf8"), "25000");
    assert.equal(await readFile(path.join(root, "pids", "x", "remotegpu", "env-2", "pids.max"), "utf8"), "10");
    assert.match(String(await Cgroups.detect(root, "4:memory:/y\n")), /no cpu controller/);
  });

  it("reads each GPU's device minor from the driver's information files", async () => {
    for (const [bus, uuid, minor] of [
      ["0000:07:00.0", "GPU-aaaaaaaa-1111-2222-3333-444444444444", 0],
      ["0000:0f:00.0", "GPU-bbbbbbbb-1111-2222-3333-444444444444", 3],
    ] as const) {
      await mkdir(path.join(root, bus));
      const info = `Model: \t\t NVIDIA A100-SXM4-40GB\nIRQ:   \t\t 150\nGPU UUID: \t ${uuid}\nVideo BIOS: \t 92.00.19.00.01\nBus Type: \t PCIe\nBus Location: \t ${bus}\nDevice Minor: \t ${minor}\nGPU Excluded:\t No\n`;
      await writeFile(path.join(root, bus, "information"), info);
    }
    assert.deepEqual([...nvidiaDeviceMinors(root)].sort(), [
      ["GPU-aaaaaaaa-1111-2222-3333-444444444444", 0],
      ["GPU-bbbbbbbb-1111-2222-3333-444444444444", 3],
    ]);
    assert.equal(nvidiaDeviceMinors(path.join(root, "absent")).size, 0);
  });
});
