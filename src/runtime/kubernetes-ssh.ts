import { Duplex, PassThrough, Writable } from "node:stream";
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
    signal: AbortSignal,
  ): AsyncGenerator<FromAgent> {
    const { id, generation } = environment;
    // A failed load (the database away) is tried again by the next connection.
    this.key ??= this.loadKey().catch((err: unknown) => {
      this.key = undefined;
      throw err;
    });
    const hostKey = await this.key;
    // What goes to the client, pulled by the call: ssh2's writes wait while it is full.
    const out = new PassThrough({ objectMode: true, highWaterMark: 16 });
    // Not half-open: once the client's bytes end, ssh2 sees the connection close, and its sessions end.
    const socket = new Duplex({
      allowHalfOpen: false,
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
    const hangUp = () => socket.destroy();
    signal.addEventListener("abort", hangUp, { once: true });
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
      signal.removeEventListener("abort", hangUp);
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
    // Stdin's end reaches the command only on v5.channel.k8s.io (Kubernetes 1.30 and later): on
    // older protocols client-node would close the whole WebSocket, output and status with it.
    const stdin = new Metered((ws) => ws.protocol === "v5.channel.k8s.io");
    // With rows and columns, client-node sends the size on the resize channel, and again on "resize".
    const stdout = Object.assign(new Paced(), pty ? { rows: pty.rows, columns: pty.cols } : {});
    const stderr = new Paced();
    let status: V1Status | undefined;
    const ws = await this.exec.exec(namespace, name, CONTAINER, argv, stdout, stderr, stdin.toSocket, Boolean(pty), (s) => (status = s));
    stdout.source = stderr.source = stdin.socket = ws;
    const exited = new Promise<{ code: number; message?: string }>((resolve) => {
      ws.on("close", () => {
        // Without a status the connection broke: the outputs end here, and the session with 255 as ssh's own failures.
        stdout.end();
        stderr.end();
        resolve(status ? exitStatus(status) : { code: 255, message: "the connection to the pod was lost" });
      });
    });
    return {
      stdin: stdin.writable,
      stdout,
      stderr,
      resize: (rows, cols) => {
        Object.assign(stdout, { rows, columns: cols });
        stdout.emit("resize");
      },
      exited,
      // Ends the exec's stream. Kubernetes does not signal the command: one that ignores its closed
      // stdin and output runs on in the pod (as with kubectl exec).
      hangUp: () => ws.terminate(),
    };
  }

  /** `ssh -L` to a port on the pod's loopback: a port-forward through the Kubernetes API. */
  private async forward(environmentId: string, generation: number, host: string, port: number): Promise<Duplex | undefined> {
    if (!["127.0.0.1", "localhost", "::1"].includes(host)) return undefined;
    const { namespace, name } = this.pod(environmentId, generation);
    const fromPod = new Paced();
    // A port-forward cannot half-close (client-node would close the WebSocket): the end of the
    // client's bytes waits for the pod's side to end.
    const toPod = new Metered(() => false);
    // Without retries, client-node answers the WebSocket itself.
    const ws = (await this.forwarder.portForward(namespace, name, [port], fromPod, null, toPod.toSocket)) as WebSocket;
    fromPod.source = toPod.socket = ws;
    const stream = Duplex.from({ readable: fromPod, writable: toPod.writable });
    ws.on("close", () => fromPod.end());
    stream.once("close", () => ws.terminate());
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

/**
 * What goes up a WebSocket: client-node sends each chunk the moment it reads it, so writes here
 * wait while the socket holds more than UPLOAD_BUFFER unsent bytes, and the SSH client with them.
 */
class Metered {
  /** What client-node reads. */
  readonly toSocket = new PassThrough();
  socket?: WebSocket;
  readonly writable: Writable;

  constructor(endsInput: (socket: WebSocket) => boolean) {
    this.writable = new Writable({
      write: (chunk: Buffer, _encoding, done) => {
        this.toSocket.write(chunk);
        const sent = () => {
          const s = this.socket;
          if (s && s.readyState === s.OPEN && s.bufferedAmount >= UPLOAD_BUFFER) setTimeout(sent, 5);
          else done();
        };
        sent();
      },
      final: (done) => {
        if (this.socket && endsInput(this.socket)) this.toSocket.end();
        done();
      },
    });
  }
}

const UPLOAD_BUFFER = 1 << 20;

/** An exec's final status: 0 on Success, else the ExitCode cause, or 1 and the status's message. */
function exitStatus(status: V1Status): { code: number; message?: string } {
  if (status.status === "Success") return { code: 0 };
  const code = Number(status.details?.causes?.find((c) => c.reason === "ExitCode")?.message);
  return Number.isInteger(code) ? { code } : { code: 1, message: status.message ?? "the exec failed" };
}
