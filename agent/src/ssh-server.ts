import { spawn, type ChildProcess } from "node:child_process";
import { createHash, timingSafeEqual } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile, rename, writeFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { Duplex, PassThrough } from "node:stream";
import { promisify } from "node:util";
import { execFile } from "node:child_process";
import type { Client } from "@connectrpc/connect";
import type { HostService, OpenSshTunnelCommand } from "@remotegpu/sdk";
import type { Algorithms, Connection, ParsedKey, ServerChannel } from "ssh2";
import type { Logger } from "./logger.js";
import { confinedSessionArgv, exportLines, GATE_ENV } from "./workload-handles.js";
import type { SessionTarget } from "./workloads.js";

const execFileP = promisify(execFile);
/** ssh2, loaded with the first tunnel: an agent that serves none starts without it. */
const loadSsh2 = async () => (await import("ssh2")).default;

/** What a session runs: a login shell, a command, or the SFTP server. */
type Program = { shell: true } | { command: string } | { sftp: true };

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
const PTY_RELAY = `
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

/** Where OpenSSH's SFTP server is found, on the host and in images. */
const SFTP_SERVERS = [
  "/usr/lib/openssh/sftp-server",
  "/usr/libexec/openssh/sftp-server",
  "/usr/lib/ssh/sftp-server",
  "/usr/libexec/sftp-server",
];

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
    const { Server, utils } = await loadSsh2();
    const keys = command.authorizedKeys.map((k) => utils.parseKey(k)).filter((k): k is ParsedKey => !(k instanceof Error));
    // What goes up to the control plane, pulled by the call: ssh2's writes wait while it is full.
    const up = new PassThrough({ objectMode: true, highWaterMark: 16 });
    async function* requests() {
      yield { tunnelId };
      yield* up as AsyncIterable<{ data?: Uint8Array; keyFingerprint?: string }>;
    }
    const abort = new AbortController();
    const socket = new Duplex({
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
    // OpenSSH prefers chacha20-poly1305, which ssh2 computes in JavaScript without its optional
    // native addon (about a seventh of AES's speed here); AES runs in OpenSSL.
    const algorithms = { cipher: { remove: "chacha20-poly1305@openssh.com" } } as unknown as Algorithms;
    const ssh = new Server({ hostKeys: [hostKey], ident: "RemoteGPU", algorithms }, (client) => {
      // An open connection is activity (idle auto-stop), and it ends when its environment stops
      // running here (stopped, deleted, restarted as a new generation): checked every 2 s.
      const watch = setInterval(() => {
        this.workloads.touch(environmentId);
        void this.workloads.sessionTarget(environmentId).then((now) => now?.generation === target.generation || client.end());
      }, 2000);
      client.once("close", () => clearInterval(watch));
      // Proving a key takes a few round trips; a client that has not in 60 s is let go.
      const login = setTimeout(() => client.end(), 60_000);
      this.serve(client, environmentId, target, keys, (fingerprint) => {
        clearTimeout(login);
        up.write({ keyFingerprint: fingerprint });
      });
    });
    ssh.injectSocket(socket as unknown as net.Socket);
    return { ok: true, message: "tunnel open" };
  }

  private serve(
    client: Connection,
    environmentId: string,
    target: SessionTarget,
    keys: ParsedKey[],
    accepted: (fingerprint: string) => void,
  ): void {
    client.on("error", (err) => this.logger.debug({ environmentId, err: String(err) }, "ssh connection error"));
    let attempts = 0;
    client.on("authentication", (ctx) => {
      // As OpenSSH's MaxAuthTries: a client that keeps guessing is let go.
      if (++attempts > 6) {
        client.end();
        return;
      }
      if (ctx.method !== "publickey") return ctx.reject(["publickey"]);
      const offered = ctx.key.data;
      const key = keys.find((k) => {
        const mine = k.getPublicSSH();
        return mine.length === offered.length && timingSafeEqual(mine, offered);
      });
      if (!key) return ctx.reject(["publickey"]);
      if (ctx.signature) {
        if (ctx.blob === undefined || key.verify(ctx.blob, ctx.signature, ctx.hashAlgo) !== true) return ctx.reject(["publickey"]);
        accepted(`SHA256:${createHash("sha256").update(offered).digest("base64").replace(/=+$/, "")}`);
      }
      ctx.accept();
    });
    client.on("ready", () => {
      client.on("session", (acceptSession) => {
        const session = acceptSession();
        let pty: { rows: number; cols: number; term: string } | undefined;
        let resize: ((rows: number, cols: number) => void) | undefined;
        const env: Record<string, string> = {};
        session.on("pty", (accept, _reject, info) => {
          // ssh2 passes the TERM the client sent, which its types leave out.
          pty = { rows: info.rows || 24, cols: info.cols || 80, term: (info as { term?: string }).term || "xterm" };
          accept?.();
        });
        session.on("window-change", (accept, _reject, info) => {
          resize?.(info.rows, info.cols);
          accept?.();
        });
        session.on("env", (accept, reject, info) => {
          if (/^(LANG|LC_[A-Z]+|COLORTERM)$/.test(info.key)) {
            env[info.key] = info.val;
            accept?.();
          } else reject?.();
        });
        // Each program starts from the environment as it is now: one that stopped starts nothing.
        const start = (channel: ServerChannel, program: Program, withPty: typeof pty) => {
          void this.workloads
            .sessionTarget(environmentId)
            .then((now) => {
              if (now?.generation !== target.generation) throw new Error("the environment is no longer running here");
              return this.spawnIn(now, program, withPty, env);
            })
            .then((child) => {
              const control = child.stdio[3] as NodeJS.WritableStream | null;
              control?.on("error", () => undefined); // the relay may be gone before a late window change
              resize = (rows, cols) => control?.writable && control.write(`${rows} ${cols}\n`);
              relay(child, channel, Boolean(withPty));
            })
            .catch((err: Error) => {
              channel.stderr.write(`remotegpu: ${err.message}\n`);
              channel.exit(1);
              channel.end();
            });
        };
        session.on("shell", (accept) => start(accept(), { shell: true }, pty));
        session.on("exec", (accept, _reject, info) => start(accept(), { command: info.command }, pty));
        session.on("subsystem", (accept, reject, info) => {
          if (info.name !== "sftp") return reject();
          start(accept(), { sftp: true }, undefined);
        });
        session.on("auth-agent", (_accept, reject) => reject?.());
        session.on("x11", (_accept, reject) => reject?.());
      });
      client.on("tcpip", (accept, reject, info) => {
        void this.workloads
          .sessionTarget(environmentId)
          .then((now) => (now?.generation === target.generation ? this.forwardTarget(now, info.destIP, info.destPort) : undefined))
          .then((to) => {
            if (!to) return reject();
            const remote = net.connect(to.port, to.host);
            remote.once("connect", () => {
              const channel = accept();
              channel.pipe(remote).pipe(channel);
              channel.on("close", () => remote.destroy());
              remote.on("close", () => channel.close());
            });
            remote.once("error", () => reject());
          });
      });
      // Remote forwarding (ssh -R) would open a port on the host: refused.
      client.on("request", (_accept, reject) => reject?.());
    });
  }

  /**
   * Starts a session's program in the environment: a shell, `sh -c command` or OpenSSH's
   * sftp-server, on a pty when asked. In process mode it runs confined as the workload is (its
   * uid, its limits, its cgroups, entered before any of it runs); in a container through exec.
   */
  private async spawnIn(
    target: SessionTarget,
    program: Program,
    pty: { rows: number; cols: number; term: string } | undefined,
    env: Record<string, string>,
  ): Promise<ChildProcess> {
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
        "sftp" in program
          ? [
              "/bin/sh",
              "-c",
              `for p in ${SFTP_SERVERS.join(" ")}; do [ -x "$p" ] && exec "$p"; done; echo "no sftp-server in this image" >&2; exit 127`,
            ]
          : ["/bin/sh", ...("shell" in program ? ["-l"] : ["-c", program.command])];
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

/** Joins a session's program to its channel: input, output, errors, the exit status, and the end. */
function relay(child: ChildProcess, channel: ServerChannel, pty: boolean): void {
  child.stdout!.pipe(channel, { end: false });
  if (pty) child.stderr!.pipe(channel, { end: false });
  else child.stderr!.pipe(channel.stderr, { end: false });
  channel.pipe(child.stdin!);
  child.stdin!.on("error", () => undefined);
  let outputs = 2;
  let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const finish = () => {
    if (outputs > 0 || !exit) return;
    if (exit.code !== null) channel.exit(exit.code);
    else channel.exit(exit.signal?.replace(/^SIG/, "") ?? "KILL", false, "");
    channel.end();
  };
  for (const s of [child.stdout!, child.stderr!]) {
    s.once("end", () => {
      outputs--;
      finish();
    });
  }
  child.once("exit", (code, signal) => {
    exit = { code, signal };
    finish();
  });
  child.once("error", (err) => {
    channel.stderr.write(`${err.message}\n`);
    exit = { code: 127, signal: null };
    outputs = 0;
    finish();
  });
  // The client went away: what it started goes too (its process group).
  channel.once("close", () => {
    if (exit || child.pid === undefined) return;
    try {
      process.kill(-child.pid, "SIGHUP");
    } catch {
      // already gone
    }
  });
}
