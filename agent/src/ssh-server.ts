import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile, rename, writeFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { Duplex, PassThrough, type Writable } from "node:stream";
import { promisify } from "node:util";
import { execFile } from "node:child_process";
import type { Client } from "@connectrpc/connect";
import type { HostService, OpenSshTunnelCommand } from "@remotegpu/sdk";
import type { Logger } from "./logger.js";
import { type Program, type Pty, type SessionProgram, SFTP_IN_IMAGE, SFTP_SERVERS, serveSsh } from "./ssh-sessions.js";
import { confinedSessionArgv, exportLines, GATE_ENV } from "./workload-handles.js";
import type { SessionTarget } from "./workloads.js";

const execFileP = promisify(execFile);
/** ssh2, loaded with the first tunnel: an agent that serves none starts without it. */
const loadSsh2 = async () => (await import("ssh2")).default;

/** What the SSH server needs of the workloads. */
export interface SshWorkloads {
  sessionTarget(environmentId: string): Promise<SessionTarget | undefined>;
  touch(environmentId: string): void;
}

/**
 * Runs a program on a pseudo-terminal and relays it: its input on stdin, its output on stdout, and
 * window sizes ("rows cols" lines) on fd 3. Python's pty module does what Node cannot without a
 * native addon; python3 is on every GPU server image we know of. Exits with the program's status.
 */
export const PTY_RELAY = `
import fcntl, os, pty, select, signal, struct, sys, termios
rows, cols, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
def size(r, c):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", r, c, 0, 0))
size(rows, cols)
watched, pending = [0, fd, 3], b""
while fd in watched:
    for ready in select.select(watched, [], [])[0]:
        try:
            data = os.read(ready, 65536)
        except OSError:
            data = b""
        if ready == fd:
            if data:
                os.write(1, data)
            else:
                watched.remove(fd)
        elif ready == 0:
            if data:
                os.write(fd, data)
            else:
                watched.remove(0)
        else:
            if not data:
                watched.remove(3)
            pending += data
            while b"\\n" in pending:
                line, pending = pending.split(b"\\n", 1)
                r, c = map(int, line.split())
                size(r, c)
                os.kill(pid, signal.SIGWINCH)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
`;

/** The host key, made on first use and kept in the agent's data directory (made again if it does not parse). */
export async function hostKey(dataDir: string): Promise<string> {
  const file = path.join(dataDir, "ssh_host_ed25519_key");
  const kept = await readFile(file, "utf8").catch(() => "");
  const { utils } = await loadSsh2();
  if (kept && !(utils.parseKey(kept) instanceof Error)) return kept;
  const made = utils.generateKeyPairSync("ed25519").private;
  await writeFile(`${file}.tmp`, made, { mode: 0o600 });
  await rename(`${file}.tmp`, file);
  return made;
}

/**
 * SSH for the environments this agent runs, on tunnels through the control plane (no port is
 * opened on the host). Public keys only: the client must prove it holds one of the environment's
 * keys as the control plane sent them for this connection. Sessions (shell, exec, pty), SFTP and
 * local forwarding to the environment's ports; agent, X11 and remote forwarding are refused.
 */
export class SshServer {
  private key?: Promise<string>;

  constructor(
    /** Reads (or makes) the host key: on the first tunnel, so an agent that serves none writes none. */
    private readonly loadKey: () => Promise<string>,
    private readonly workloads: SshWorkloads,
    private readonly logger: Logger,
  ) {}

  /** Calls the control plane back for the tunnel and serves SSH on it until either side ends. */
  async open(command: OpenSshTunnelCommand, server: Client<typeof HostService>): Promise<{ ok: boolean; message: string }> {
    const { tunnelId, environmentId } = command;
    const target = await this.workloads.sessionTarget(environmentId);
    if (!target) return { ok: false, message: `environment ${environmentId} is not running on this host` };
    this.key ??= this.loadKey();
    const hostKey = await this.key;
    // What goes up to the control plane, pulled by the call: ssh2's writes wait while it is full.
    const up = new PassThrough({ objectMode: true, highWaterMark: 16 });
    async function* requests() {
      yield { tunnelId };
      yield* up as AsyncIterable<{ data?: Uint8Array; keyFingerprint?: string }>;
    }
    const abort = new AbortController();
    // Not half-open: once the tunnel ends, ssh2 sees the connection close, and its sessions end.
    const socket = new Duplex({
      allowHalfOpen: false,
      read() {},
      write: (chunk: Buffer, _encoding, done) => {
        this.workloads.touch(environmentId);
        up.write({ data: chunk }, done);
      },
      final: (done) => {
        up.end();
        done();
      },
      destroy: (err, done) => {
        up.end();
        abort.abort();
        done(err);
      },
    });
    void (async () => {
      try {
        for await (const m of server.acceptSshTunnel(requests(), { signal: abort.signal })) {
          this.workloads.touch(environmentId);
          socket.push(m.data);
        }
        socket.push(null);
      } catch (err) {
        if (!abort.signal.aborted) this.logger.info({ environmentId, err: String(err) }, "ssh tunnel ended");
        socket.destroy();
      }
    })();
    serveSsh(socket, {
      ssh2: await loadSsh2(),
      hostKey,
      authorizedKeys: command.authorizedKeys,
      backend: {
        touch: () => this.workloads.touch(environmentId),
        current: async () => (await this.workloads.sessionTarget(environmentId))?.generation === target.generation,
        start: async (program, pty, env) => {
          const now = await this.workloads.sessionTarget(environmentId);
          if (now?.generation !== target.generation) throw new Error("the environment is no longer running here");
          return fromChild(await this.spawnIn(now, program, pty, env), Boolean(pty));
        },
        forward: async (host, port) => {
          const to = await this.forwardTarget(target, host, port);
          return to && connected(net.connect(to.port, to.host));
        },
      },
      accepted: (fingerprint) => up.write({ keyFingerprint: fingerprint }),
      debug: (message, err) => this.logger.debug({ environmentId, err: String(err) }, message),
    });
    return { ok: true, message: "tunnel open" };
  }

  /**
   * Starts a session's program in the environment: a shell, `sh -c command` or OpenSSH's
   * sftp-server, on a pty when asked. In process mode it runs confined as the workload is (its
   * uid, its limits, its cgroups, entered before any of it runs); in a container through exec.
   */
  private async spawnIn(target: SessionTarget, program: Program, pty: Pty | undefined, env: Record<string, string>): Promise<ChildProcess> {
    const term: Record<string, string> = pty ? { TERM: pty.term } : {};
    let argv: string[];
    let options: Parameters<typeof spawn>[2] = {};
    let gateEnv: Record<string, string> | undefined;
    if (target.kind === "process") {
      const shell = existsSync("/bin/bash") ? "/bin/bash" : "/bin/sh";
      if ("sftp" in program) argv = [SFTP_SERVERS.find((p) => existsSync(p)) ?? "sftp-server"];
      else argv = "shell" in program ? [shell, "-l"] : [shell, "-c", program.command];
      const sessionEnv = { ...target.env, ...env, ...term };
      const c = target.confinement;
      if (pty) argv = ["python3", "-c", PTY_RELAY, String(pty.rows), String(pty.cols), ...argv];
      if (c) {
        argv = confinedSessionArgv(c, argv);
        if (c.enter) gateEnv = sessionEnv;
      }
      options = { cwd: target.cwd, env: gateEnv ? GATE_ENV : sessionEnv, ...(c ? { uid: c.uid, gid: c.uid } : {}) };
    } else {
      const vars = Object.entries({ ...env, ...term }).flatMap(([k, v]) => ["-e", `${k}=${v}`]);
      const inside =
        "sftp" in program ? ["/bin/sh", "-c", SFTP_IN_IMAGE] : ["/bin/sh", ...("shell" in program ? ["-l"] : ["-c", program.command])];
      argv = [target.engine, "exec", "-i", ...(pty ? ["-t"] : []), ...vars, target.name, ...inside];
      if (pty) argv = ["python3", "-c", PTY_RELAY, String(pty.rows), String(pty.cols), ...argv];
    }
    const child = spawn(argv[0]!, argv.slice(1), {
      ...options,
      detached: true,
      // fd 3: the pty relay's window sizes; fd 4: the gate's environment.
      stdio: ["pipe", "pipe", "pipe", pty ? "pipe" : "ignore", gateEnv ? "pipe" : "ignore"],
    });
    if (gateEnv && target.kind === "process" && target.confinement?.enter) {
      await new Promise<void>((resolve, reject) => {
        child.once("spawn", resolve);
        child.once("error", reject);
      });
      const gate = child.stdio[4] as NodeJS.WritableStream;
      gate.on("error", () => undefined);
      try {
        await target.confinement.enter(child.pid!);
      } catch (err) {
        child.kill("SIGKILL");
        throw err;
      }
      gate.end(`${exportLines(gateEnv)}:\n`);
    }
    return child;
  }

  /** Where `ssh -L` may go: a port of the environment, on its loopback (process mode) or in its container. */
  private async forwardTarget(target: SessionTarget, host: string, port: number): Promise<{ host: string; port: number } | undefined> {
    if (!["127.0.0.1", "localhost", "::1"].includes(host)) return undefined;
    // Every process-mode environment shares the host's loopback: only its own declared ports.
    if (target.kind === "process") return target.ports.includes(port) ? { host: "127.0.0.1", port } : undefined;
    const { stdout } = await execFileP(target.engine, ["inspect", "-f", "{{.NetworkSettings.IPAddress}}", target.name]).catch(() => ({
      stdout: "",
    }));
    const ip = stdout.trim();
    return ip ? { host: ip, port } : undefined;
  }
}

/** A session's program as a child process: a pty relay's window sizes go to its fd 3. */
function fromChild(child: ChildProcess, pty: boolean): SessionProgram {
  const control = pty ? (child.stdio[3] as Writable) : undefined;
  control?.on("error", () => undefined); // the relay may be gone before a late window change
  return {
    stdin: child.stdin!,
    stdout: child.stdout!,
    stderr: child.stderr!,
    resize: (rows, cols) => control?.writable && control.write(`${rows} ${cols}\n`),
    exited: new Promise((resolve) => {
      child.once("exit", (code, signal) => resolve(code !== null ? { code } : { signal: (signal ?? "KILL").replace(/^SIG/, "") }));
      child.once("error", (err) => resolve({ code: 127, message: err.message }));
    }),
    // Its process group: what the session started goes with it.
    hangUp: () => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, "SIGHUP");
      } catch {
        // already gone
      }
    },
  };
}

/** The socket once connected, or nothing if it cannot connect. */
function connected(socket: net.Socket): Promise<net.Socket | undefined> {
  return new Promise((resolve) => {
    socket.once("connect", () => resolve(socket));
    socket.once("error", () => resolve(undefined));
  });
}
