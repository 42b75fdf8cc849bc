import { strict as assert } from "node:assert";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import http2 from "node:http2";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { WorkloadState, type AgentHello } from "../../gen/remotegpu/v1/agent_pb.js";
import { LogStream } from "../../gen/remotegpu/v1/environment_pb.js";
import {
  HostService,
  StreamHeartbeatsResponseSchema,
  type StreamHeartbeatsRequest,
  type StreamHeartbeatsResponse,
} from "../../gen/remotegpu/v1/host_pb.js";
import { AgentConnection } from "../../agent/src/agent-connection.js";
import { containerRunArgs, Workloads } from "../../agent/src/workloads.js";
import { Channel } from "../../src/platform/channel.js";
import { createLogger } from "../../src/platform/logger.js";
import { freePort, isListening } from "../support/child.js";
import { Recorder, spec, twoPorts, Waiter } from "../support/workload-recorder.js";

describe("integration: the agent runtime (process mode)", function () {
  this.timeout(30_000);
  let dataDir: string;
  let events: Recorder;
  let workloads: Workloads;
  const logger = createLogger("silent");

  beforeEach(async () => {
    dataDir = await mkdtemp(path.join(os.tmpdir(), "rgpu-agent-"));
    events = new Recorder();
    workloads = new Workloads({ dataDir, logger, events, engine: "process", stopGraceMs: 300 });
  });
  afterEach(async () => {
    await workloads.shutdown();
    await rm(dataDir, { recursive: true, force: true });
  });

  it("serves a port through the proxy from its volume, stops keeping the volume, restarts on a higher generation and removes", async () => {
    const [hostPort, containerPort] = await twoPorts();
    const dir = path.join(dataDir, "environments", "env-web");
    const volume = path.join(dir, "volume");
    await mkdir(volume, { recursive: true });
    await writeFile(path.join(volume, "hello.txt"), "from the volume\n");
    const web = (generation: number) =>
      spec("env-web", ["python3", "-m", "http.server", String(containerPort), "--bind", "127.0.0.1"], {
        ports: [{ name: "web", containerPort, hostPort, protocol: "HTTP" }],
        generation,
      });

    assert.deepEqual(await workloads.run(web(1)), { ok: true, message: "started" });
    await events.state("env-web", "RUNNING", 1);
    assert.deepEqual(workloads.running(), ["env-web"]);
    assert.deepEqual(workloads.activity(), [], "no traffic yet");
    const firstByte = Date.now();
    const res = await fetch(`http://127.0.0.1:${hostPort}/hello.txt`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "from the volume\n");
    const [activity] = workloads.activity();
    assert.equal(activity?.environmentId, "env-web", "traffic through the proxy is seen, for idle auto-stop");
    assert.ok(activity.lastTraffic.getTime() >= firstByte);
    // python's access log goes to stderr.
    await events.line("env-web", (l) => l.stream === "STDERR" && l.text.includes("GET /hello.txt"), "GET /hello.txt");
    assert.ok(events.texts("env-web").includes(`SYSTEM starting: python3 -m http.server ${containerPort} --bind 127.0.0.1`));

    // A retried command of the same generation changes nothing: no second process, one STARTING.
    const again = await workloads.run(web(1));
    assert.equal(again.ok, true);
    assert.match(again.message, /already running/);
    assert.equal(events.count("env-web", "STARTING"), 1, events.describe("env-web"));

    await workloads.stop("env-web");
    await events.state("env-web", "STOPPED", 1);
    assert.equal(await isListening(hostPort), false, "the proxy port is closed");
    assert.equal(await isListening(containerPort), false, "the server is gone");
    assert.ok(existsSync(path.join(volume, "hello.txt")), "the volume is kept");
    assert.deepEqual(workloads.running(), []);
    assert.ok(events.texts("env-web").includes("SYSTEM stopped"));
    await workloads.stop("env-web"); // idempotent
    assert.equal(events.count("env-web", "STOPPED"), 2);

    await workloads.run(web(2));
    await events.state("env-web", "RUNNING", 2);
    assert.equal((await fetch(`http://127.0.0.1:${hostPort}/hello.txt`)).status, 200);

    // A higher generation replaces the running one (same ports: the old one must be gone first).
    await workloads.run(web(3));
    await events.state("env-web", "STOPPED", 2);
    await events.state("env-web", "RUNNING", 3);
    assert.equal((await fetch(`http://127.0.0.1:${hostPort}/hello.txt`)).status, 200);
    // A lower one is ignored.
    const before = events.statuses.length;
    assert.match((await workloads.run(web(2))).message, /ignored/);
    assert.equal(events.statuses.length, before);

    await workloads.remove("env-web");
    const removed = await events.state("env-web", "REMOVED");
    assert.equal(removed.generation, 3);
    assert.equal(existsSync(dir), false, "the directory is gone");
    assert.equal(await isListening(hostPort), false);
    assert.deepEqual(workloads.running(), []);
  });

  it("counts an open SSH connection as activity, for idle auto-stop", async () => {
    await workloads.run(spec("env-ssh", ["sleep", "30"]));
    await events.state("env-ssh", "RUNNING", 1);
    assert.deepEqual(workloads.activity(), [], "nothing yet");
    const before = Date.now();
    workloads.touch("env-ssh"); // what the SSH server does for each connection's bytes, and every 2 s
    const [activity] = workloads.activity();
    assert.equal(activity?.environmentId, "env-ssh");
    assert.ok(activity.lastTraffic.getTime() >= before);
  });

  it("reports a process that exits by itself as FAILED with its exit code and output", async () => {
    await workloads.run(spec("env-exit", ["sh", "-c", "echo bye; echo oops >&2; exit 3"]));
    const failed = await events.state("env-exit", "FAILED");
    assert.equal(failed.exitCode, 3);
    assert.equal(failed.message, "exited with code 3");
    await events.line("env-exit", (l) => l.stream === "SYSTEM" && l.text === "exited with code 3", "exited with code 3");
    const texts = events.texts("env-exit");
    assert.ok(texts.includes("STDOUT bye") && texts.includes("STDERR oops"), JSON.stringify(texts));
    assert.deepEqual(workloads.running(), []);
  });

  it("gives the process its GPUs, ports, id and home in the environment", async () => {
    const port = await freePort();
    const script =
      'echo "gpus=$CUDA_VISIBLE_DEVICES nv=$NVIDIA_VISIBLE_DEVICES port=$PORT ui=$PORT_WEB_UI id=$REMOTEGPU_ENVIRONMENT_ID home=$HOME pwd=$(pwd) x=$X"';
    await workloads.run(
      spec("env-vars", ["sh", "-c"], {
        args: [script],
        env: { X: "y", CUDA_VISIBLE_DEVICES: "all" },
        gpuUuids: ["GPU-aaa", "GPU-bbb"],
        gpuIndices: [0, 1],
        ports: [{ name: "web-ui", containerPort: port, hostPort: port, protocol: "HTTP" }],
      }),
    );
    const volume = path.join(dataDir, "environments", "env-vars", "volume");
    const line = await events.line("env-vars", (l) => l.stream === "STDOUT", "the echo");
    assert.equal(line.text, `gpus=GPU-aaa,GPU-bbb nv=GPU-aaa,GPU-bbb port=${port} ui=${port} id=env-vars home=${volume} pwd=${volume} x=y`);
    // Its port never opened: it never was RUNNING, and ending by itself is a failure even with code 0.
    const failed = await events.state("env-vars", "FAILED");
    assert.equal(failed.exitCode, 0);
    assert.equal(events.count("env-vars", "RUNNING"), 0);

    await workloads.run(spec("env-nogpu", ["sh", "-c", 'echo "[$CUDA_VISIBLE_DEVICES]"']));
    assert.equal((await events.line("env-nogpu", (l) => l.stream === "STDOUT", "the echo")).text, "[]");
  });

  it("fails without a command, or when the host port is taken, naming the reason", async () => {
    const empty = await workloads.run(spec("env-empty", []));
    assert.deepEqual(empty, { ok: false, message: "no command: process mode needs one" });
    assert.equal((await events.state("env-empty", "FAILED")).message, "no command: process mode needs one");

    const [hostPort, containerPort] = await twoPorts();
    const squatter = net.createServer();
    await new Promise<void>((resolve) => squatter.listen(hostPort, "0.0.0.0", resolve));
    try {
      const busy = await workloads.run(
        spec("env-busy", ["sleep", "30"], { ports: [{ name: "ssh", containerPort, hostPort, protocol: "TCP" }] }),
      );
      assert.equal(busy.ok, false);
      const failed = await events.state("env-busy", "FAILED");
      assert.match(failed.message, new RegExp(`port ssh: cannot listen on ${hostPort}: .*EADDRINUSE`));
      assert.ok(!events.texts("env-busy").some((t) => t.startsWith("SYSTEM starting")), "nothing was started");
    } finally {
      squatter.close();
    }

    const missing = await workloads.run(spec("env-missing", ["/nonexistent/program"]));
    assert.equal(missing.ok, false);
    assert.match((await events.state("env-missing", "FAILED")).message, /ENOENT/);
  });

  it("stops the whole process group, with SIGKILL for what ignores SIGTERM", async () => {
    // The shell ignores SIGTERM (and so does its child); it prints the child's pid.
    await workloads.run(spec("env-stubborn", ["sh", "-c", 'trap "" TERM; sleep 300 & echo $!; wait']));
    await events.state("env-stubborn", "RUNNING");
    const pid = Number((await events.line("env-stubborn", (l) => l.stream === "STDOUT", "the pid")).text);
    assert.ok(alive(pid));
    await workloads.stop("env-stubborn");
    assert.equal((await events.state("env-stubborn", "STOPPED")).message, "stopped on request");
    assert.ok(events.texts("env-stubborn").includes("SYSTEM killed by SIGKILL"), JSON.stringify(events.texts("env-stubborn")));
    await gone(pid, "the grandchild");
    // Unknown ids stop and remove fine.
    await workloads.stop("env-unknown");
    assert.equal((await events.state("env-unknown", "STOPPED")).generation, 0);
    await workloads.remove("env-unknown");
    await events.state("env-unknown", "REMOVED");
  });

  it("splits output into lines, caps long ones at 8 KiB and keeps a last line without newline", async () => {
    const program = "import sys; sys.stdout.write('x' * 20000 + '\\nafter\\r\\n' + 'é' * 3 + '\\nend'); sys.stdout.flush()";
    await workloads.run(spec("env-lines", ["python3", "-c", program]));
    await events.state("env-lines", "FAILED");
    await events.line("env-lines", (l) => l.text === "exited with code 0", "the exit");
    const out = events.lines.filter((l) => l.environmentId === "env-lines" && l.stream === "STDOUT").map((l) => l.text);
    assert.deepEqual(out, ["x".repeat(8192), "after", "ééé", "end"]);
  });

  it("leaves its workloads running when it detaches; the next agent adopts them: same process, output resumed", async () => {
    const [hostPort, containerPort] = await twoPorts();
    // Prints a numbered line every 100 ms while serving HTTP.
    const program = `import http.server, threading, time, sys
def tick():
    n = 0
    while True:
        print(f"tick {n}", flush=True); n += 1; time.sleep(0.1)
threading.Thread(target=tick, daemon=True).start()
http.server.ThreadingHTTPServer(("127.0.0.1", ${containerPort}), http.server.SimpleHTTPRequestHandler).serve_forever()`;
    await workloads.run(
      spec("env-live", ["python3", "-c", program], { ports: [{ name: "web", containerPort, hostPort, protocol: "HTTP" }] }),
    );
    await events.state("env-live", "RUNNING");
    await events.line("env-live", (l) => l.text === "tick 5", "tick 5");
    const saved = () => JSON.parse(readFileSync(path.join(dataDir, "environments", "env-live", "workload.json"), "utf8"));
    const pid = saved().trace.pid as number;
    await workloads.detach();
    assert.ok(alive(pid), "the workload outlives the agent");
    assert.equal(await isListening(hostPort), false, "the forwarder lived in the agent");
    await new Promise((r) => setTimeout(r, 500)); // output while no agent reads it

    const later = new Recorder();
    workloads = new Workloads({ dataDir, logger, events: later, engine: "process", stopGraceMs: 300 });
    await workloads.recover();
    assert.deepEqual(workloads.running(), ["env-live"]);
    assert.equal((await later.state("env-live", "RUNNING")).generation, 1);
    assert.equal(later.count("env-live", "STARTING"), 0, "not started again");
    assert.equal(saved().trace.pid, pid, "the same process");
    assert.equal((await fetch(`http://127.0.0.1:${hostPort}/`)).status, 200, "served through a new forwarder");
    // Every tick once, in order, across both agents: nothing lost, nothing twice.
    const ticks = (r: Recorder) => r.texts("env-live").filter((t) => t.startsWith("STDOUT tick"));
    const last = Number(ticks(events).at(-1)!.split(" ")[2]);
    await later.line("env-live", (l) => l.text === `tick ${last + 10}`, "ten more ticks");
    const all = [...ticks(events), ...ticks(later)].map((t) => Number(t.split(" ")[2]));
    assert.deepEqual(all.slice(0, last + 11), [...Array(last + 11).keys()]);
    assert.ok(later.texts("env-live").includes("SYSTEM adopted by a restarted agent"));
    await workloads.stop("env-live");
    await gone(pid, "the adopted process, stopped");
  });

  it("reports what ended while it was away as FAILED, and trusts no state file that is corrupt, old or names another process", async () => {
    // Ends once told to (a file in its volume), which is after the agent went: never while it watches.
    await workloads.run(spec("env-short", ["sh", "-c", "while [ ! -e go ]; do sleep 0.05; done"]));
    await workloads.run(spec("env-old", ["sleep", "30"]));
    await workloads.run(spec("env-reused", ["sleep", "30"]));
    await workloads.run(spec("env-corrupt", ["sleep", "30"]));
    for (const id of ["env-short", "env-old", "env-reused", "env-corrupt"]) await events.state(id, "RUNNING");
    const file = (id: string) => path.join(dataDir, "environments", id, "workload.json");
    const pids = ["env-old", "env-reused", "env-corrupt"].map((id) => JSON.parse(readFileSync(file(id), "utf8")).trace.pid as number);
    const short = JSON.parse(readFileSync(file("env-short"), "utf8")).trace.pid as number;
    await workloads.detach();
    await writeFile(path.join(dataDir, "environments", "env-short", "volume", "go"), "");
    await gone(short, "env-short, told to end", 10_000);
    // An older agent's file (no version); a pid that now names another process (this test's own);
    // a file cut short.
    await writeFile(file("env-old"), JSON.stringify({ environmentId: "env-old", generation: 1 }));
    const reused = JSON.parse(readFileSync(file("env-reused"), "utf8"));
    reused.trace.pid = process.pid;
    await writeFile(file("env-reused"), JSON.stringify(reused));
    await writeFile(file("env-corrupt"), readFileSync(file("env-corrupt"), "utf8").slice(0, 40));

    const later = new Recorder();
    workloads = new Workloads({ dataDir, logger, events: later, engine: "process", stopGraceMs: 300 });
    await workloads.recover();
    assert.deepEqual(workloads.running(), []);
    assert.match((await later.state("env-short", "FAILED")).message, /ended while the agent was not running/);
    assert.match((await later.state("env-reused", "FAILED")).message, /ended while the agent was not running/);
    await later.line("env-old", (l) => /version 1, not 2\); not adopted/.test(l.text), "the old state noted");
    await later.line("env-corrupt", (l) => /not JSON\); not adopted/.test(l.text), "the corrupt state noted");
    assert.ok(alive(process.pid), "the process that reused the pid is left alone");
    // What was not adopted still runs; a new run of its environment ends it first (it would hold the ports).
    assert.ok(pids.every(alive));
    for (const id of ["env-old", "env-reused", "env-corrupt"]) await workloads.run(spec(id, ["sleep", "30"], { generation: 2 }));
    for (const pid of pids) await gone(pid, `the leftover ${pid}`);
    await later.line("env-corrupt", (l) => l.text === "killed 1 leftover process(es) of an earlier run", "the leftover noted");
  });

  it("applies a changed port list of the same generation in place: the process runs on, PORT unchanged", async () => {
    const [hostPort, containerPort] = await twoPorts();
    const [altHost, altContainer] = await twoPorts();
    const ports = [{ name: "web", containerPort, hostPort, protocol: "HTTP" as const }];
    const web = spec("env-ports", ["sh", "-c", 'echo "port=$PORT"; exec python3 -m http.server $PORT --bind 127.0.0.1'], { ports });
    await workloads.run(web);
    await events.state("env-ports", "RUNNING");
    const pid = () => JSON.parse(readFileSync(path.join(dataDir, "environments", "env-ports", "workload.json"), "utf8")).trace.pid;
    const before = pid();
    const alt = { name: "alt", containerPort: altContainer, hostPort: altHost, protocol: "TCP" as const };
    assert.deepEqual(await workloads.run({ ...web, ports: [...ports, alt] }), { ok: true, message: "generation 1 is already running" });
    assert.equal(pid(), before);
    assert.equal((await fetch(`http://127.0.0.1:${hostPort}/`)).status, 200);
    assert.equal(await isListening(altHost), true, "the new port's forwarder listens");
    await workloads.run({ ...web, ports: [alt] });
    assert.equal(await isListening(hostPort), false, "the removed port's forwarder is closed");
    assert.equal(pid(), before);
    assert.equal(events.count("env-ports", "STARTING"), 1);
    // Its output is read from a file as it grows: waited for, not expected at once.
    await events.line("env-ports", (l) => l.stream === "STDOUT" && l.text === `port=${containerPort}`, "PORT as first set");
    // The env's own PORT wins over the first port's.
    await workloads.run(spec("env-own-port", ["sh", "-c", 'echo "port=$PORT"'], { ports, env: { PORT: "7777" } }));
    await events.line("env-own-port", (l) => l.text === "port=7777", "PORT from the env");
  });

  it("refuses ids that are not a plain name", async () => {
    await assert.rejects(() => workloads.run(spec("../escape", ["true"])), /invalid environment id/);
    await assert.rejects(() => workloads.remove(".."), /invalid environment id/);
  });
});

/** Whether the process exists and is not a zombie (an orphan here may wait a moment to be reaped). */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

/** A SIGKILL takes effect asynchronously: polls until `pid` has died. */
async function gone(pid: number, what: string, ms = 2000): Promise<void> {
  for (const deadline = Date.now() + ms; alive(pid); await new Promise((r) => setTimeout(r, 20))) {
    if (Date.now() > deadline) assert.fail(`${what} (pid ${pid}) still alive after ${ms} ms`);
  }
}

describe("unit: container run arguments", () => {
  // What every container gets by default: an init, no new privileges, a pids limit, ten capabilities.
  const CONFINED = [
    "--init",
    "--security-opt",
    "no-new-privileges",
    "--pids-limit",
    "4096",
    "--cap-drop",
    "ALL",
    "--cap-add",
    "AUDIT_WRITE,CHOWN,DAC_OVERRIDE,FOWNER,FSETID,KILL,NET_BIND_SERVICE,SETGID,SETUID,SYS_CHROOT",
  ];
  const base = spec("env-1", ["python3", "-m", "http.server"], {
    image: "pytorch/pytorch:2.4",
    args: ["8000"],
    env: { TOKEN: "a=b" },
    gpuUuids: ["GPU-aaa", "GPU-bbb"],
    gpuIndices: [0, 1],
    ports: [
      { name: "web", containerPort: 8000, hostPort: 31000, protocol: "HTTP" },
      { name: "ssh", containerPort: 22, hostPort: 0, protocol: "TCP" },
    ],
    cpuMillicores: 4500,
    memoryBytes: 8 * 2 ** 30,
  });

  it("docker: GPUs as one quoted device list, ports, volume, env, limits, entrypoint", () => {
    assert.deepEqual(containerRunArgs("docker", base, "/data/environments/env-1/volume"), [
      "run",
      "-d",
      "--name",
      "rgpu-env-1",
      "--label",
      "remotegpu.environment=env-1",
      "--label",
      "remotegpu.workspace=ws-1",
      "--label",
      "remotegpu.generation=1",
      ...CONFINED,
      "--gpus",
      '"device=GPU-aaa,GPU-bbb"',
      "-p",
      "31000:8000",
      "-v",
      "/data/environments/env-1/volume:/workspace",
      "-w",
      "/workspace",
      "-e",
      "TOKEN=a=b",
      "-e",
      "REMOTEGPU_ENVIRONMENT_ID=env-1",
      "-e",
      "PORT=8000",
      "-e",
      "PORT_WEB=8000",
      "-e",
      "PORT_SSH=22",
      "-e",
      "CUDA_VISIBLE_DEVICES=GPU-aaa,GPU-bbb",
      "-e",
      "NVIDIA_VISIBLE_DEVICES=GPU-aaa,GPU-bbb",
      "--cpus",
      "4.5",
      "--memory",
      String(8 * 2 ** 30),
      "--entrypoint",
      "python3",
      "pytorch/pytorch:2.4",
      "-m",
      "http.server",
      "8000",
    ]);
  });

  it("confines: never privileged or the host's namespaces; podman gets its own user namespace where it can; operators add capabilities", () => {
    const policy = { pidsLimit: 100, capAdd: ["NET_RAW", "CHOWN"], userns: true };
    const podman = containerRunArgs("podman", base, "/v", policy);
    for (const args of [podman, containerRunArgs("docker", base, "/v", policy)]) {
      assert.ok(!args.some((a) => /privileged|--network=host|--net=host|--pid=host|host$/.test(a)), args.join(" "));
      assert.equal(args.filter((a) => a === "-v").length, 1, "the volume is the only host path");
      assert.equal(args[args.indexOf("--pids-limit") + 1], "100");
      assert.equal(
        args[args.indexOf("--cap-add") + 1],
        "AUDIT_WRITE,CHOWN,DAC_OVERRIDE,FOWNER,FSETID,KILL,NET_BIND_SERVICE,SETGID,SETUID,SYS_CHROOT,NET_RAW",
      );
    }
    assert.ok(podman.includes("--userns=auto"));
    assert.ok(podman.includes("/v:/workspace:U"), "the volume is owned inside the namespace");
    assert.ok(!containerRunArgs("docker", base, "/v", policy).includes("--userns=auto"), "docker's user namespaces are the daemon's");
  });

  it("podman: one CDI device per GPU; no GPUs, limits or command: none of their flags", () => {
    const args = containerRunArgs("podman", base, "/v");
    assert.deepEqual(args.slice(19, 23), ["--device", "nvidia.com/gpu=GPU-aaa", "--device", "nvidia.com/gpu=GPU-bbb"]);
    const bare = containerRunArgs("docker", spec("env-2", [], { image: "ubuntu:24.04" }), "/v");
    assert.deepEqual(bare, [
      "run",
      "-d",
      "--name",
      "rgpu-env-2",
      "--label",
      "remotegpu.environment=env-2",
      "--label",
      "remotegpu.workspace=ws-1",
      "--label",
      "remotegpu.generation=1",
      ...CONFINED,
      "-v",
      "/v:/workspace",
      "-w",
      "/workspace",
      "-e",
      "REMOTEGPU_ENVIRONMENT_ID=env-2",
      "ubuntu:24.04",
    ]);
  });
});

/** One agent stream as the fake control plane saw it. */
interface Session {
  hello: AgentHello;
  received: StreamHeartbeatsRequest[];
  send(message: MessageInitShape<typeof StreamHeartbeatsResponseSchema>["message"]): void;
  end(): void;
}

describe("integration: the agent connection drives the runtime", function () {
  this.timeout(30_000);
  let dataDir: string;
  let server: http2.Http2Server;
  const h2sessions = new Set<http2.ServerHttp2Session>();
  let sessions: Session[];
  const waiter = new Waiter();
  let stop: AbortController;
  let running: Promise<void>;
  let connection: AgentConnection;
  let workloads: Workloads;

  beforeEach(async () => {
    dataDir = await mkdtemp(path.join(os.tmpdir(), "rgpu-agent-"));
    sessions = [];
    // A control plane that welcomes every stream and lets the test speak on it.
    const handler = connectNodeAdapter({
      routes: (router) =>
        router.service(HostService, {
          async *streamHeartbeats(requests) {
            const it = requests[Symbol.asyncIterator]();
            const first = await it.next();
            if (first.done || first.value.message.case !== "hello") return;
            const out = new Channel<StreamHeartbeatsResponse>();
            const session: Session = {
              hello: first.value.message.value,
              received: [],
              send: (message) => out.push(create(StreamHeartbeatsResponseSchema, { message })),
              end: () => out.close(),
            };
            session.send({ case: "welcome", value: { sessionId: `s${sessions.length + 1}` } });
            sessions.push(session);
            waiter.poke();
            void (async () => {
              for (let r = await it.next(); !r.done; r = await it.next()) {
                session.received.push(r.value);
                waiter.poke();
              }
            })().catch(() => undefined);
            yield* out;
          },
        }),
    });
    server = http2.createServer(handler);
    // The agent's transport keeps its HTTP/2 connection open for reuse: close would wait for it.
    server.on("session", (s) => {
      h2sessions.add(s);
      s.once("close", () => h2sessions.delete(s));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as net.AddressInfo).port;
    const logger = createLogger("silent");
    workloads = new Workloads({
      dataDir,
      logger,
      engine: "process",
      stopGraceMs: 300,
      events: { status: (r) => connection.status(r), logs: (id, lines) => connection.logs(id, lines) },
    });
    connection = new AgentConnection({
      servers: [`http://127.0.0.1:${port}`],
      hostId: "host-1",
      token: "t",
      agentVersion: "test",
      capacity: { cpuMillicores: 1000, memoryBytes: 1, diskBytes: 1 },
      logger,
      workloads,
      logBufferLines: 3,
      initialBackoffMs: 50,
      maxBackoffMs: 100,
      read: async () => ({
        inventory: [],
        samples: [],
        time: new Date(),
        host: {
          time: new Date(),
          cpuUtilization: 0,
          memoryUsedBytes: 0,
          memoryTotalBytes: 1,
          diskUsedBytes: 0,
          diskTotalBytes: 1,
          load1: 0,
          uptimeSeconds: 1,
        },
      }),
    });
  });
  afterEach(async () => {
    stop?.abort();
    await running?.catch(() => undefined);
    await workloads.shutdown();
    for (const s of h2sessions) s.destroy();
    await new Promise((resolve) => server.close(resolve));
    await rm(dataDir, { recursive: true, force: true });
  });

  const start = () => {
    stop = new AbortController();
    running = connection.run(stop.signal);
  };
  const session = (n: number) => waiter.until(`agent session ${n}`, () => sessions[n - 1]);
  /** The first message of `session` of the given kind that `match`es. */
  const received = <C extends NonNullable<StreamHeartbeatsRequest["message"]["case"]>>(
    s: Session,
    kind: C,
    match: (v: Extract<StreamHeartbeatsRequest["message"], { case: C }>["value"]) => boolean,
  ) =>
    waiter.until(`a ${kind} message; got ${s.received.map((r) => r.message.case).join(", ")}`, () => {
      for (const r of s.received)
        if (r.message.case === kind && match(r.message.value as never))
          return r.message.value as Extract<StreamHeartbeatsRequest["message"], { case: C }>["value"];
      return undefined;
    });

  it("runs, reports and removes environments on command, and tells a new session what runs", async () => {
    start();
    const s1 = await session(1);
    assert.deepEqual(s1.hello.runningEnvironmentIds, []);
    assert.equal(s1.hello.containersSupported, false);

    s1.send({
      case: "command",
      value: {
        commandId: "c1",
        command: {
          case: "runEnvironment",
          value: { environmentId: "env-a", command: ["sh", "-c", "echo hello from env-a; exec sleep 300"], generation: 7n },
        },
      },
    });
    const result = await received(s1, "commandResult", (r) => r.commandId === "c1");
    assert.deepEqual([result.ok, result.message], [true, "started"]);
    const up = await received(s1, "environmentStatus", (r) => r.environmentId === "env-a" && r.state === WorkloadState.RUNNING);
    assert.equal(up.generation, 7n);
    await received(s1, "environmentLogs", (r) => r.lines.some((l) => l.stream === LogStream.STDOUT && l.text === "hello from env-a"));

    s1.send({
      case: "command",
      value: { commandId: "c2", command: { case: "runEnvironment", value: { environmentId: "env-b", generation: 1n } } },
    });
    const refused = await received(s1, "commandResult", (r) => r.commandId === "c2");
    assert.deepEqual([refused.ok, refused.message], [false, "no command: process mode needs one"]);

    // The stream breaks; the next hello names what still runs.
    s1.end();
    const s2 = await session(2);
    assert.deepEqual(s2.hello.runningEnvironmentIds, ["env-a"]);

    s2.send({ case: "command", value: { commandId: "c3", command: { case: "removeEnvironment", value: { environmentId: "env-a" } } } });
    assert.equal((await received(s2, "commandResult", (r) => r.commandId === "c3")).ok, true);
    const gone = await received(s2, "environmentStatus", (r) => r.environmentId === "env-a" && r.state === WorkloadState.REMOVED);
    assert.equal(gone.generation, 7n);
    assert.equal(existsSync(path.join(dataDir, "environments", "env-a")), false);

    s2.send({ case: "command", value: { commandId: "c4", command: { case: "drain", value: {} } } });
    assert.deepEqual((await received(s2, "commandResult", (r) => r.commandId === "c4")).message, "draining; 0 environments still running");
  });

  it("keeps the latest status per environment and the newest log lines while disconnected, and sends them after the welcome", async () => {
    const t = new Date();
    connection.status({ environmentId: "env-x", generation: 1, state: "STARTING", message: "", time: t });
    connection.status({ environmentId: "env-x", generation: 1, state: "FAILED", message: "exited with code 1", exitCode: 1, time: t });
    connection.logs(
      "env-x",
      ["1", "2", "3", "4"].map((text) => ({ time: t, stream: "STDOUT" as const, text })),
    );
    connection.logs("env-y", [{ time: t, stream: "SYSTEM", text: "5" }]);
    start();
    const s1 = await session(1);
    const failed = await received(s1, "environmentStatus", (r) => r.environmentId === "env-x");
    assert.deepEqual([failed.state, failed.exitCode, failed.message], [WorkloadState.FAILED, 1, "exited with code 1"]);
    const kinds = s1.received.map((r) => r.message.case).filter((c) => c !== "heartbeat");
    assert.deepEqual(kinds, ["environmentLogs", "environmentLogs", "environmentStatus"]);
    const logs = s1.received.flatMap(({ message: m }) =>
      m.case === "environmentLogs" ? m.value.lines.map((l) => `${m.value.environmentId}:${l.text}`) : [],
    );
    assert.deepEqual(logs, ["env-x:3", "env-x:4", "env-y:5"], "the oldest lines beyond the bound are dropped");
  });
});
