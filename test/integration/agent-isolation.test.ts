import { strict as assert } from "node:assert";
import { execFile } from "node:child_process";
import { readFileSync, statSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { Cgroups } from "../../agent/src/cgroups.js";
import { Workloads } from "../../agent/src/workloads.js";
import { createLogger } from "../../src/platform/logger.js";
import { agentTempDir } from "../support/child.js";
import { preparePodman, removeTestContainers, TEST_IMAGE } from "../support/podman.js";
import { Recorder, spec, twoPorts } from "../support/workload-recorder.js";

const execFileP = promisify(execFile);
const logger = createLogger("silent");

// What a tenant with a workspace member token can make a workload do on an agent host, tried for
// real: each attempt prints "<what>: <outcome>" and the tests read those lines.
const PROBE = `
import os, sys, signal
def attempt(what, fn):
    try:
        fn(); print(f"{what}: allowed", flush=True)
    except OSError as e:
        print(f"{what}: {e.strerror}", flush=True)
for what, target in [("other volume", sys.argv[1]), ("token", sys.argv[2]), ("state", sys.argv[3]), ("agent environ", f"/proc/{sys.argv[4]}/environ")]:
    attempt(what, lambda t=target: open(t, "rb").read())
attempt("kill other", lambda: os.kill(int(sys.argv[5]), signal.SIGKILL))
print("uid", os.getuid(), "secret" if "REMOTEGPU_TEST_SECRET" in os.environ else "no secret", flush=True)
`;

describe("integration: process-mode workloads confined to a uid of their own (agent as root)", function () {
  this.timeout(60_000);
  let dataDir: string;
  let events: Recorder;
  let workloads: Workloads;

  before(function () {
    if (process.getuid?.() !== 0) this.skip(); // switching users needs root, as on a GPU server
  });
  beforeEach(async () => {
    dataDir = await agentTempDir("rgpu-iso-");
    events = new Recorder();
    workloads = new Workloads({
      dataDir,
      logger,
      events,
      engine: "process",
      stopGraceMs: 300,
      processUsers: { first: 231000, last: 231009 },
      processPidsLimit: 40,
    });
  });
  afterEach(async () => {
    await workloads.shutdown();
    await rm(dataDir, { recursive: true, force: true });
  });

  it("cannot read another environment's volume, the agent's token, state or environ, nor kill another workload", async () => {
    const [hostPort, containerPort] = await twoPorts();
    const web = spec("iso-victim", ["python3", "-m", "http.server", String(containerPort), "--bind", "127.0.0.1"], {
      ports: [{ name: "web", containerPort, hostPort, protocol: "HTTP" }],
    });
    await workloads.run(web);
    await events.state("iso-victim", "RUNNING");
    const victimVolume = path.join(dataDir, "environments", "iso-victim", "volume");
    await writeFile(path.join(victimVolume, "secret.txt"), "the victim's data\n");
    const victimPid = JSON.parse(readFileSync(path.join(dataDir, "environments", "iso-victim", "workload.json"), "utf8")).trace.pid;
    const token = path.join(dataDir, "agent-token");
    await writeFile(token, "rgpu_secret\n", { mode: 0o600 });
    process.env.REMOTEGPU_TEST_SECRET = "the agent's own environment";
    try {
      await workloads.run(
        spec("iso-attacker", ["python3", "-c", PROBE], {
          args: [
            path.join(victimVolume, "secret.txt"),
            token,
            path.join(dataDir, "environments", "iso-victim", "workload.json"),
            String(process.pid), // the agent is this process here
            String(victimPid),
          ],
        }),
      );
      await events.state("iso-attacker", "FAILED"); // it ends when done
    } finally {
      delete process.env.REMOTEGPU_TEST_SECRET;
    }
    const said = events.texts("iso-attacker").filter((t) => t.startsWith("STDOUT "));
    assert.deepEqual(said, [
      "STDOUT other volume: Permission denied",
      "STDOUT token: Permission denied",
      "STDOUT state: Permission denied",
      "STDOUT agent environ: Permission denied",
      "STDOUT kill other: Operation not permitted",
      "STDOUT uid 231001 no secret",
    ]);
    const victim = statSync(victimVolume);
    assert.equal(victim.uid, 231000, "each volume belongs to its environment's uid");
    assert.equal(victim.mode & 0o777, 0o700);
    assert.equal((await fetch(`http://127.0.0.1:${hostPort}/secret.txt`)).status, 200, "the victim runs on");
  });

  it("reaches its own volume by its full path; under a directory other users cannot pass, runs nothing and says why", async () => {
    await workloads.run(spec("iso-home", ["sh", "-c", 'echo kept > "$HOME/by-path.txt" && cat "$HOME/by-path.txt"']));
    await events.line("iso-home", (l) => l.stream === "STDOUT", "its output").then((l) => assert.equal(l.text, "kept"));

    const closed = await mkdtemp(path.join(os.tmpdir(), "rgpu-iso-closed-")); // 0700, as mkdtemp makes it
    try {
      const shut = new Workloads({
        dataDir: path.join(closed, "agent"),
        logger,
        events,
        engine: "process",
        processUsers: { first: 231000, last: 231009 },
      });
      assert.match(shut.runtimeUnavailableReason, new RegExp(`other users may not pass ${closed} \\(chmod o\\+x it`));
      const refused = await shut.run(spec("iso-closed", ["true"]));
      assert.deepEqual(refused, { ok: false, message: shut.runtimeUnavailableReason });
      await shut.shutdown();
    } finally {
      await rm(closed, { recursive: true, force: true });
    }
  });

  it("a fork bomb stops at its pids limit and a memory hog at its memory; the others run on, and a stop ends every process of the uid", async () => {
    const [hostPort, containerPort] = await twoPorts();
    await workloads.run(
      spec("iso-web", ["python3", "-m", "http.server", String(containerPort), "--bind", "127.0.0.1"], {
        ports: [{ name: "web", containerPort, hostPort, protocol: "HTTP" }],
      }),
    );
    await events.state("iso-web", "RUNNING");
    // Forks until it cannot, then says how far it got (children that left its group included).
    const bomb = "n=0; while [ $n -lt 500 ]; do (setsid sleep 300 &) 2>/dev/null || break; n=$((n+1)); done; echo forked $n; sleep 300";
    await workloads.run(spec("iso-bomb", ["sh", "-c", bomb]));
    const forked = await events.line("iso-bomb", (l) => l.text.startsWith("forked "), "how many forks");
    assert.ok(Number(forked.text.split(" ")[1]) < 40, forked.text);
    const hog = "try:\n    b = bytearray(512 * 2**20)\n    print('got 512 MiB')\nexcept MemoryError:\n    print('MemoryError')";
    await workloads.run(spec("iso-hog", ["python3", "-c", hog], { memoryBytes: 128 * 2 ** 20 }));
    await events.line("iso-hog", (l) => l.stream === "STDOUT", "the hog's answer").then((l) => assert.equal(l.text, "MemoryError"));
    assert.equal((await fetch(`http://127.0.0.1:${hostPort}/`)).status, 200, "the neighbour still serves");

    const uid = statSync(path.join(dataDir, "environments", "iso-bomb", "volume")).uid;
    await workloads.stop("iso-bomb");
    await events.state("iso-bomb", "STOPPED");
    // Zombies do not count: they are dead (this sandbox's PID 1 does not reap orphans; systemd would).
    const { stdout } = await execFileP("ps", ["-o", "stat=,pid=", "-u", String(uid)]).catch(() => ({ stdout: "" }));
    const living = stdout.split("\n").filter((l) => l.trim() && !l.trim().startsWith("Z"));
    assert.deepEqual(living, [], "no process of the bomb's uid is left, not even those that left its group");
  });
});

describe("integration: process-mode workloads in cgroups of their own (agent as root, cgroup v1 here)", function () {
  this.timeout(60_000);
  // Two GPUs of the host by UUID, standing for /dev/nvidia100 and /dev/nvidia101 (no driver holds
  // NVIDIA's major here, so an open the cgroup allows fails with ENXIO, one it refuses with EPERM).
  const gpuDeviceMinors = new Map([
    ["GPU-given", 100],
    ["GPU-other", 101],
  ]);
  let dataDir: string;
  let events: Recorder;
  let workloads: Workloads;

  before(async function () {
    if (process.getuid?.() !== 0 || typeof (await Cgroups.detect()) === "string") this.skip();
  });
  beforeEach(async () => {
    dataDir = await agentTempDir("rgpu-cg-");
    events = new Recorder();
    workloads = new Workloads({
      dataDir,
      logger,
      events,
      engine: "process",
      stopGraceMs: 300,
      processUsers: { first: 231010, last: 231019 },
      gpuDeviceMinors,
    });
  });
  afterEach(async () => {
    await workloads.shutdown();
    await rm(dataDir, { recursive: true, force: true });
  });

  const pidOf = (id: string) =>
    JSON.parse(readFileSync(path.join(dataDir, "environments", id, "workload.json"), "utf8")).trace.pid as number;
  const cpuSeconds = (pid: number) => {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime + stime, in USER_HZ ticks
  };

  it("a busy loop gets its CPU reservation and no more; its cgroup goes with it", async () => {
    await workloads.run(spec("cg-spin", ["python3", "-c", "while True: pass"], { cpuMillicores: 200 }));
    await events.state("cg-spin", "RUNNING");
    const pid = pidOf("cg-spin");
    const before = cpuSeconds(pid);
    await new Promise((r) => setTimeout(r, 2000));
    const used = cpuSeconds(pid) - before;
    // 0.2 CPU for 2 s is 0.4 s; unlimited, the loop takes a whole core (about 2 s).
    assert.ok(used > 0.1 && used < 0.7, `the loop used ${used} s of CPU in 2 s`);
    const cpuPath = /^\d+:(?:[^:]*,)?cpu(?:,[^:]*)?:(.*)$/m.exec(readFileSync(`/proc/${pid}/cgroup`, "utf8"))![1]!;
    assert.match(cpuPath, /\/remotegpu\/cg-spin$/);
    await workloads.stop("cg-spin");
    await events.state("cg-spin", "STOPPED");
    assert.throws(() => statSync(path.join("/sys/fs/cgroup/cpu", cpuPath)), /ENOENT/, "the cgroup is removed");
  });

  it("shared memory that RLIMIT_DATA does not count is held to the reservation: killed, the neighbour runs on", async () => {
    const [hostPort, containerPort] = await twoPorts();
    await workloads.run(
      spec("cg-web", ["python3", "-m", "http.server", String(containerPort), "--bind", "127.0.0.1"], {
        ports: [{ name: "web", containerPort, hostPort, protocol: "HTTP" }],
      }),
    );
    await events.state("cg-web", "RUNNING");
    const touch =
      "import mmap\nm = mmap.mmap(-1, 512 * 2**20)\nfor i in range(0, len(m), 4096): m[i] = 1\nprint('touched 512 MiB', flush=True)";
    await workloads.run(spec("cg-shm", ["python3", "-c", touch], { memoryBytes: 128 * 2 ** 20 }));
    const failed = await events.state("cg-shm", "FAILED");
    assert.equal(failed.message, "killed for going over its memory limit of 128 MiB (SIGKILL)");
    assert.ok(!events.texts("cg-shm").some((t) => t.startsWith("STDOUT")), "it never got the memory");
    assert.equal((await fetch(`http://127.0.0.1:${hostPort}/`)).status, 200, "the neighbour still serves");
  });

  it("gets its environment exactly as given, set only once it is in its cgroups", async () => {
    const tricky = { QUOTED: 'it\'s "q" $HOME `x` \\', MULTI: "line 1\nline 2", EMPTY: "" };
    const print =
      "import json, os; print(json.dumps({k: os.environ.get(k) for k in ['QUOTED', 'MULTI', 'EMPTY', 'LD_PRELOAD']}), flush=True)";
    await workloads.run(spec("cg-env", ["python3", "-c", print], { env: tricky }));
    const line = await events.line("cg-env", (l) => l.stream === "STDOUT", "the environment");
    assert.deepEqual(JSON.parse(line.text), { ...tricky, LD_PRELOAD: null });
  });

  it("runs nothing of the tenant's environment before it is in its cgroups (LD_PRELOAD reaches only prlimit and the program)", async () => {
    // The dynamic loader names each program that was started with this LD_PRELOAD: the gate shell,
    // which runs before the cgroup entry, must not be one of them.
    await workloads.run(spec("cg-preload", ["python3", "-c", "print('ran')"], { env: { LD_PRELOAD: "/nonexistent/rgpu-preload.so" } }));
    await events.line("cg-preload", (l) => l.stream === "STDOUT" && l.text === "ran", "the program's output");
    await events.state("cg-preload", "FAILED"); // ended by itself: its output is all in
    const loads = events.texts("cg-preload").filter((t) => t.startsWith("STDERR") && t.includes("rgpu-preload.so"));
    assert.equal(loads.length, 2, loads.join("\n"));
  });

  it("opens the device file of the GPU it was given, not another GPU's", async () => {
    const devices = await mkdtemp(path.join(os.tmpdir(), "rgpu-dev-"));
    try {
      await execFileP("chmod", ["755", devices]);
      for (const minor of [100, 101]) {
        await execFileP("mknod", ["-m", "666", path.join(devices, `nvidia${minor}`), "c", "195", String(minor)]);
      }
      const probe = `
import sys
for name in sys.argv[1:]:
    try:
        open(name, "rb").close(); print(name[-9:], "opened", flush=True)
    except OSError as e:
        print(name[-9:], e.strerror, flush=True)`;
      await workloads.run(
        spec("cg-gpu", ["python3", "-c", probe], {
          args: [path.join(devices, "nvidia100"), path.join(devices, "nvidia101")],
          gpuUuids: ["GPU-given"],
        }),
      );
      await events.state("cg-gpu", "FAILED"); // it ends by itself, with code 0
      const said = Object.fromEntries(
        events
          .texts("cg-gpu")
          .filter((t) => t.startsWith("STDOUT "))
          .map((t) => t.split(" ").slice(1, 3) as [string, string]),
      );
      assert.equal(said.nvidia101, "Operation", "another GPU's device is refused by the cgroup (EPERM)");
      assert.notEqual(said.nvidia100, "Operation", "its own GPU's device is not refused");
    } finally {
      await rm(devices, { recursive: true, force: true });
    }
  });
});

describe("integration: containers confined by default (real podman)", function () {
  this.timeout(90_000);
  let dataDir: string;
  let events: Recorder;
  let workloads: Workloads;
  const ids = ["iso-ctr"];

  before(async function () {
    this.timeout(120_000);
    await preparePodman();
  });
  beforeEach(async () => {
    dataDir = await mkdtemp(path.join(os.tmpdir(), "rgpu-iso-ctr-"));
    events = new Recorder();
    workloads = new Workloads({ dataDir, logger, events, engine: "podman", stopGraceMs: 2000, containerPolicy: { pidsLimit: 64 } });
  });
  afterEach(async () => {
    await workloads.shutdown();
    await removeTestContainers(ids);
    await rm(dataDir, { recursive: true, force: true });
  });

  it("no setuid escalation, no capability it was not given, a pids limit; the volume the only host path", async () => {
    // As root in the container: a setuid-root copy of python in the volume; then, as uid 1000, run it.
    const probe = `
import os, shutil, subprocess, sys
print("nonewprivs", [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0], flush=True)
try:
    os.mknod("/tmp/dev", 0o600 | 0o020000, os.makedev(1, 3)); print("mknod: allowed", flush=True)
except OSError as e:
    print("mknod:", e.strerror, flush=True)
shutil.copy("/usr/bin/python3", "/workspace/py"); os.chmod("/workspace/py", 0o4755)
r = subprocess.run(["/workspace/py", "-c", "import os; print(os.geteuid())"], preexec_fn=lambda: os.setuid(1000), capture_output=True, text=True)
print("euid after setuid binary:", r.stdout.strip(), flush=True)
n = 0
procs = []
try:
    for _ in range(200):
        procs.append(subprocess.Popen(["sleep", "30"])); n += 1
except OSError:
    pass
print("sleeps started:", n, flush=True)
for p in procs: p.kill()
print("uid_map", " ".join(open("/proc/self/uid_map").read().split()[:2]), flush=True)
mounts = [l.split()[4] for l in open("/proc/self/mountinfo") if l.split()[3] != "/" or l.split()[4] == "/workspace"]
print("workspace mounted:", "/workspace" in mounts, flush=True)
`;
    await workloads.run(spec("iso-ctr", ["python3", "-c", probe], { image: TEST_IMAGE }));
    await events.state("iso-ctr", "FAILED"); // it ends when done
    const said = events.texts("iso-ctr").filter((t) => t.startsWith("STDOUT "));
    assert.ok(said.includes("STDOUT nonewprivs 1"), said.join("\n"));
    assert.ok(said.includes("STDOUT mknod: Operation not permitted"), said.join("\n"));
    assert.ok(said.includes("STDOUT euid after setuid binary: 1000"), said.join("\n"));
    const started = Number(said.find((t) => t.startsWith("STDOUT sleeps started:"))?.split(":")[1]);
    assert.ok(started < 64, said.join("\n"));
    const args = (
      await execFileP("podman", [
        "container",
        "inspect",
        "--format",
        "{{.HostConfig.Privileged}} {{.HostConfig.NetworkMode}} {{.HostConfig.PidMode}}",
        "rgpu-iso-ctr",
      ])
    ).stdout.trim();
    assert.doesNotMatch(args, /^true|host/, args);
  });

  it("a container over its memory limit is killed by the kernel, and the environment says so", async () => {
    const hog = "b = []\nwhile True:\n    b.append(bytearray(16 * 2**20))";
    await workloads.run(spec("iso-ctr", ["python3", "-c", hog], { image: TEST_IMAGE, memoryBytes: 64 * 2 ** 20 }));
    const failed = await events.state("iso-ctr", "FAILED");
    // Podman says OOMKilled only where it can tell (cgroup v2); this sandbox's cgroup v1 leaves it false.
    assert.match(
      failed.message,
      /^(killed for going over its memory limit of 64 MiB|exited with code 137 \(killed: SIGKILL, most often for going over the memory limit of 64 MiB\))/,
    );
    assert.equal(failed.exitCode, 137);
  });
});
