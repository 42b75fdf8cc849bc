import { strict as assert } from "node:assert";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { Workloads } from "../../agent/src/workloads.js";
import { createLogger } from "../../src/platform/logger.js";
import { isListening } from "../support/child.js";
import { eventually } from "../support/eventually.js";
import { preparePodman, removeTestContainers, TEST_IMAGE, writeCdiSpec } from "../support/podman.js";
import { Recorder, spec, twoPorts } from "../support/workload-recorder.js";

const execFileP = promisify(execFile);

async function inspect(name: string, format: string): Promise<string> {
  return (await execFileP("podman", ["container", "inspect", "--format", format, name])).stdout.trim();
}

describe("integration: the agent runtime with real podman containers", function () {
  this.timeout(60_000);
  let dataDir: string;
  let events: Recorder;
  let workloads: Workloads;
  let removeCdi: () => Promise<void>;
  const ids = ["ctr-web", "ctr-pull", "ctr-live", "ctr-short", "ctr-burst"];
  const logger = createLogger("silent");
  const gpus = ["GPU-11111111-2222-3333-4444-555555555555", "GPU-66666666-7777-8888-9999-000000000000"];

  before(async function () {
    this.timeout(120_000);
    await preparePodman();
    removeCdi = await writeCdiSpec(gpus);
  });
  after(async () => {
    await removeTestContainers(ids);
    await removeCdi?.();
  });
  beforeEach(async () => {
    dataDir = await mkdtemp(path.join(os.tmpdir(), "rgpu-ctr-"));
    events = new Recorder();
    workloads = new Workloads({ dataDir, logger, events, engine: "podman", stopGraceMs: 2000 });
  });
  afterEach(async () => {
    await workloads.shutdown();
    await removeTestContainers(ids);
    await rm(dataDir, { recursive: true, force: true });
  });

  it("serves HTTP on its published port from the volume at /workspace, with its GPUs, env and limits; stops, restarts, removes", async () => {
    const [hostPort] = await twoPorts();
    const volume = path.join(dataDir, "environments", "ctr-web", "volume");
    const script =
      'echo "cuda=$CUDA_VISIBLE_DEVICES nv=$NVIDIA_VISIBLE_DEVICES cdi=$CDI_GPU_0,$CDI_GPU_1 port=$PORT web=$PORT_WEB pwd=$(pwd)"; exec python3 -m http.server $PORT';
    const web = (generation: number) =>
      spec("ctr-web", ["sh", "-c", script], {
        image: TEST_IMAGE,
        gpuUuids: gpus,
        gpuIndices: [0, 1],
        ports: [{ name: "web", containerPort: 8000, hostPort, protocol: "HTTP" }],
        cpuMillicores: 500,
        memoryBytes: 256 * 2 ** 20,
        generation,
      });
    assert.deepEqual(await workloads.run(web(1)), { ok: true, message: "started" });
    await events.state("ctr-web", "RUNNING", 1);
    await writeFile(path.join(volume, "hello.txt"), "from the volume\n");
    const res = await fetch(`http://127.0.0.1:${hostPort}/hello.txt`);
    assert.equal(await res.text(), "from the volume\n");
    const env = await events.line("ctr-web", (l) => l.text.startsWith("cuda="), "the env line");
    assert.equal(env.text, `cuda=${gpus.join(",")} nv=${gpus.join(",")} cdi=${gpus.join(",")} port=8000 web=8000 pwd=/workspace`);
    await events.line("ctr-web", (l) => l.stream === "STDERR" && l.text.includes("GET /hello.txt"), "the access log");
    assert.equal(await inspect("rgpu-ctr-web", "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}"), `500000000 ${256 * 2 ** 20}`);
    assert.equal(await inspect("rgpu-ctr-web", '{{index .Config.Labels "remotegpu.generation"}}'), "1");

    await workloads.stop("ctr-web");
    await events.state("ctr-web", "STOPPED", 1);
    assert.equal(await isListening(hostPort), false);
    assert.ok(existsSync(path.join(volume, "hello.txt")), "the volume is kept");

    await workloads.run(web(2));
    await events.state("ctr-web", "RUNNING", 2);
    assert.equal((await fetch(`http://127.0.0.1:${hostPort}/hello.txt`)).status, 200);
    await workloads.run(web(3)); // a restart
    await events.state("ctr-web", "RUNNING", 3);
    assert.equal(await inspect("rgpu-ctr-web", '{{index .Config.Labels "remotegpu.generation"}}'), "3");

    await workloads.remove("ctr-web");
    await events.state("ctr-web", "REMOVED");
    await assert.rejects(inspect("rgpu-ctr-web", "{{.Id}}"), "the container is gone");
    assert.equal(existsSync(volume), false, "and the volume");
  });

  it("fails with the engine's reason when the image cannot be pulled, showing the pull in the status first", async () => {
    const result = await workloads.run(spec("ctr-pull", [], { image: "localhost:1/nothing/here:latest" }));
    assert.equal(result.ok, false);
    const failed = await events.state("ctr-pull", "FAILED");
    assert.match(failed.message, /^cannot pull image localhost:1\/nothing\/here:latest: .*connection refused/);
    const starting = events.statuses.filter((s) => s.environmentId === "ctr-pull" && s.state === "STARTING").map((s) => s.message);
    assert.ok(
      starting.some((m) => m.startsWith("pulling localhost:1/nothing/here:latest: ")),
      `pull progress in the status: ${JSON.stringify(starting)}`,
    );
  });

  it("leaves containers running when it detaches; the next agent follows them again, and reports one that exited meanwhile", async () => {
    const [hostPort] = await twoPorts();
    const ticker = 'i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.2; done & exec python3 -m http.server $PORT';
    await workloads.run(
      spec("ctr-live", ["sh", "-c", ticker], {
        image: TEST_IMAGE,
        ports: [{ name: "web", containerPort: 8000, hostPort, protocol: "HTTP" }],
      }),
    );
    // Three lines of one write, which the engine stamps with one time, then one more later.
    const burst = "printf 'one\\ntwo\\nthree\\n'; sleep 3; echo four; exec sleep 1000";
    await workloads.run(spec("ctr-burst", ["sh", "-c", burst], { image: TEST_IMAGE }));
    await events.state("ctr-live", "RUNNING");
    await events.line("ctr-live", (l) => l.text === "tick 3", "tick 3");
    await events.line("ctr-burst", (l) => l.text === "three", "the burst");
    // Started last, so that it ends while no agent follows it.
    await workloads.run(spec("ctr-short", ["sh", "-c", "sleep 2; exit 3"], { image: TEST_IMAGE }));
    const id = await inspect("rgpu-ctr-live", "{{.Id}}");
    await workloads.detach();
    assert.equal(events.count("ctr-short", "FAILED"), 0, "ctr-short still ran when the agent detached");
    // Meanwhile ctr-live ticks on with nobody reading.
    await eventually("ctr-short to exit", async () => (await inspect("rgpu-ctr-short", "{{.State.Running}}")) === "false");
    assert.equal(await inspect("rgpu-ctr-live", "{{.State.Running}}"), "true");

    const later = new Recorder();
    workloads = new Workloads({ dataDir, logger, events: later, engine: "podman", stopGraceMs: 2000 });
    await workloads.recover();
    assert.deepEqual(workloads.running().sort(), ["ctr-burst", "ctr-live"]);
    await later.state("ctr-live", "RUNNING");
    assert.equal(later.count("ctr-live", "STARTING"), 0);
    assert.equal(await inspect("rgpu-ctr-live", "{{.Id}}"), id, "the same container");
    assert.equal((await fetch(`http://127.0.0.1:${hostPort}/`)).status, 200);
    const short = await later.state("ctr-short", "FAILED");
    assert.equal(short.exitCode, 3);
    assert.match(short.message, /exited with code 3/);
    // The ticks written while no agent read them arrive, none lost and none repeated, each with the
    // time it was written.
    const ticks = (r: Recorder) =>
      r
        .texts("ctr-live")
        .filter((t) => t.startsWith("STDOUT tick"))
        .map((t) => Number(t.split(" ")[2]));
    const lastSeen = ticks(events).at(-1)!;
    await later.line("ctr-live", (l) => l.text === `tick ${lastSeen + 10}`, "ten more ticks");
    assert.deepEqual(
      ticks(later).slice(0, 10),
      Array.from({ length: 10 }, (_, i) => lastSeen + 1 + i),
    );
    // "four" reaches one agent or the other, depending on how long the detach took.
    const output = () => [events, later].flatMap((r) => r.texts("ctr-burst").filter((t) => t.startsWith("STDOUT")));
    await eventually("the line after the burst", () => output().includes("STDOUT four"));
    assert.deepEqual(output(), ["STDOUT one", "STDOUT two", "STDOUT three", "STDOUT four"]);
    const first = await later.line("ctr-live", (l) => l.text === `tick ${lastSeen + 1}`, "the first tick nobody read");
    const adopted = await later.line("ctr-live", (l) => l.text === "adopted by a restarted agent", "the adoption");
    assert.ok(first.time < adopted.time, `tick ${lastSeen + 1} stamped ${first.time.toISOString()}, when it was written`);
  });
});
