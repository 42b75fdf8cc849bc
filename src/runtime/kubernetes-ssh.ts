import { Duplex, PassThrough } from "node:stream";
import { Exec, type KubeConfig, PortForward, type V1Status } from "@kubernetes/client-node";
import type { WebSocket } from "ws";
// The SSH sessions the agent serves, shared (it imports nothing else of the agent).
import { type Program, type Pty, type SessionProgram, SFTP_IN_IMAGE, serveSsh } from "../../agent/src/ssh-sessions.js";
import type { FromAgent, PodSsh } from "../environment/ssh-tunnels.js";
import type { Logger } from "../platform/logger.js";
import { CONTAINER } from "./kubernetes-manifests.js";

/** What SSH needs of the Kubernetes runtime: where the environment's pod runs now. */
export interface RunningPods {
  runningPod(environmentId: string, generation: number): { namespace: string; name: string } | undefined;
}

/** ssh2, loaded with the first connection: a control plane that serves none starts without it. */
const loadSsh2 = async () => (await import("ssh2")).default;

/**
 * SSH for environments on Kubernetes, served by the control plane itself: nothing runs in the pod
 * but the user's image. Each session is an exec into the pod's container through the Kubernetes API
 * (with a TTY when the client asks for a pty, window changes on its resize channel); `ssh -L` is a
 * port-forward to the pod. The same key checks and session rules as the agent's (ssh-sessions.ts).
 * Exec needs only a shell in the image; SFTP (scp, rsync, VS Code) needs OpenSSH's sftp-server there.
 */
export class KubernetesSsh implements PodSsh {
  private readonly exec: Exec;
  private readonly forwarder: PortForward;
  private key?: Promise<string>;

  constructor(
    kc: KubeConfig,
    private readonly pods: RunningPods,
    /** The control plane's host key, shared by its replicas. */
    private readonly loadKey: () => Promise<string>,
    /** An open connection is activity, for idle auto-stop. */
    private readonly touch: (environmentId: string) => void,
    private readonly logger: Logger,
  ) {
    this.exec = new Exec(kc);
    this.forwarder = new PortForward(kc);
  }

  /** Serves SSH on a tunnel to the environment's pod: yields what goes to the client, pulling `fromClient`, until either ends. */
  async *serve(
    environment: { id: string; generation: number },
    authorizedKeys: string[],
    fromClient: AsyncIterable<Uint8Array>,
  ): AsyncGenerator<FromAgent> {
    const { id, generation } = environment;
    this.key ??= this.loadKey();
    const hostKey = await this.key;
    // What goes to the client, pulled by the call: ssh2's writes wait while it is full.
    const out = new PassThrough({ objectMode: true, highWaterMark: 16 });
    const socket = new Duplex({
      read() {},
      write: (chunk: Buffer, _encoding, done) => out.write({ data: chunk, keyFingerprint: "" }, done),
      final: (done) => {
        out.end();
        done();
      },
      destroy: (err, done) => {
        out.end();
        done(err);
      },
    });
    const pump = (async () => {
      try {
        for await (const chunk of fromClient) socket.push(chunk);
        socket.push(null);
      } catch {
        socket.destroy();
      }
    })();
    serveSsh(socket, {
      ssh2: await loadSsh2(),
      hostKey,
      authorizedKeys,
      backend: {
        touch: () => this.touch(id),
        current: async () => this.pods.runningPod(id, generation) !== undefined,
        start: (program, pty, env) => this.start(id, generation, program, pty, env),
        forward: (host, port) => this.forward(id, generation, host, port),
      },
      accepted: (fingerprint) => out.write({ data: new Uint8Array(0), keyFingerprint: fingerprint }),
      debug: (message, err) => this.logger.debug({ environmentId: id, err: String(err) }, message),
    });
    try {
      yield* out as AsyncIterable<FromAgent>;
    } finally {
      socket.destroy();
      void pump;
    }
  }

  private pod(environmentId: string, generation: number): { namespace: string; name: string } {
    const pod = this.pods.runningPod(environmentId, generation);
    if (!pod) throw new Error("the environment is no longer running");
    return pod;
  }

  /** A session's program, exec'd in the pod's container. */
  private async start(
    environmentId: string,
    generation: number,
    program: Program,
    pty: Pty | undefined,
    env: Record<string, string>,
  ): Promise<SessionProgram> {
    const { namespace, name } = this.pod(environmentId, generation);
    const inside =
      "sftp" in program ? ["/bin/sh", "-c", SFTP_IN_IMAGE] : ["/bin/sh", ...("shell" in program ? ["-l"] : ["-c", program.command])];
    // Exec takes no environment: env(1) sets the client's TERM and locale.
    const vars = Object.entries({ ...env, ...(pty ? { TERM: pty.term } : {}) }).map(([k, v]) => `${k}=${v}`);
    const argv = vars.length > 0 ? ["env", ...vars, ...inside] : inside;
    const stdin = new PassThrough();
    // With rows and columns, client-node sends the size on the resize channel, and again on "resize".
    const stdout = Object.assign(new Paced(), pty ? { rows: pty.rows, columns: pty.cols } : {});
    const stderr = new Paced();
    let status: V1Status | undefined;
    const ws = await this.exec.exec(namespace, name, CONTAINER, argv, stdout, stderr, stdin, Boolean(pty), (s) => (status = s));
    stdout.source = stderr.source = ws;
    const exited = new Promise<{ code: number }>((resolve) => {
      ws.on("close", () => {
        // Without a status the connection broke: the outputs end here, and the session with 255 as ssh's own failures.
        stdout.end();
        stderr.end();
        resolve({ code: status ? exitCode(status) : 255 });
      });
    });
    return {
      stdin,
      stdout,
      stderr,
      resize: (rows, cols) => {
        Object.assign(stdout, { rows, columns: cols });
        stdout.emit("resize");
      },
      exited,
      hangUp: () => ws.close(),
    };
  }

  /** `ssh -L` to a port on the pod's loopback: a port-forward through the Kubernetes API. */
  private async forward(environmentId: string, generation: number, host: string, port: number): Promise<Duplex | undefined> {
    if (!["127.0.0.1", "localhost", "::1"].includes(host)) return undefined;
    const { namespace, name } = this.pod(environmentId, generation);
    const fromPod = new Paced();
    const toPod = new PassThrough();
    // Without retries, client-node answers the WebSocket itself.
    const ws = (await this.forwarder.portForward(namespace, name, [port], fromPod, null, toPod)) as WebSocket;
    fromPod.source = ws;
    const stream = Duplex.from({ readable: fromPod, writable: toPod });
    ws.on("close", () => fromPod.end());
    stream.once("close", () => ws.close());
    return stream;
  }
}

/**
 * Where client-node writes what a WebSocket brings: it writes without waiting, so this pauses the
 * WebSocket while the SSH client is behind and resumes it when the client reads again.
 */
class Paced extends PassThrough {
  source?: { pause(): void; resume(): void };

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: () => void): void {
    if (!this.push(chunk)) this.source?.pause();
    done();
  }

  override _read(size: number): void {
    this.source?.resume();
    super._read(size);
  }
}

/** The exit status in an exec's final status: 0 on Success, else the ExitCode cause (1 when there is none). */
function exitCode(status: V1Status): number {
  if (status.status === "Success") return 0;
  const cause = status.details?.causes?.find((c) => c.reason === "ExitCode");
  const code = Number(cause?.message);
  return Number.isInteger(code) ? code : 1;
}
