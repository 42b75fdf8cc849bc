// SSH for one environment over one tunnel: authentication by the environment's keys, sessions
// (shell, exec, pty, SFTP) and local forwarding, whatever runs the environment. The agent serves
// its environments with it; the control plane its Kubernetes ones (src/runtime/kubernetes-ssh.ts).
// It imports nothing of the agent, and only types of ssh2, which its callers load.
import { createHash, timingSafeEqual } from "node:crypto";
import type net from "node:net";
import type { Duplex, Readable, Writable } from "node:stream";
import { finished } from "node:stream/promises";
import type { Algorithms, Connection, ParsedKey, ServerChannel } from "ssh2";

/** What a session runs: a login shell, a command, or the SFTP server. */
export type Program = { shell: true } | { command: string } | { sftp: true };

/** A pseudo-terminal the client asked for. */
export interface Pty {
  rows: number;
  cols: number;
  term: string;
}

/** A session's program, started. */
export interface SessionProgram {
  stdin: Writable;
  stdout: Readable;
  stderr: Readable;
  /** A window change on a pty session. */
  resize(rows: number, cols: number): void;
  /**
   * Settles once the program has ended: its exit status or the name of the signal that ended it,
   * with why when it could not run (shown to the client).
   */
  exited: Promise<({ code: number } | { signal: string }) & { message?: string }>;
  /** The client went away: ends the program (and what it started). */
  hangUp(): void;
}

/** Where sessions run and forwards go, for one environment as it ran when the connection opened. */
export interface SshBackend {
  /** The connection is activity (idle auto-stop). */
  touch(): void;
  /** Whether the environment still runs as it did: new sessions need it, and the connection ends when it does not. */
  current(): Promise<boolean>;
  start(program: Program, pty: Pty | undefined, env: Record<string, string>): Promise<SessionProgram>;
  /** A stream to a port of the environment (`ssh -L`), or nothing where that is not allowed. */
  forward(host: string, port: number): Promise<Duplex | undefined>;
}

/** Where OpenSSH's SFTP server is found, on hosts and in images. */
export const SFTP_SERVERS = [
  "/usr/lib/openssh/sftp-server",
  "/usr/libexec/openssh/sftp-server",
  "/usr/lib/ssh/sftp-server",
  "/usr/libexec/sftp-server",
];

/** A shell command that runs the first sftp-server it finds, for images whose layout is unknown. */
export const SFTP_IN_IMAGE = `for p in ${SFTP_SERVERS.join(" ")}; do [ -x "$p" ] && exec "$p"; done; echo "no sftp-server in this image" >&2; exit 127`;

export interface ServeOptions {
  ssh2: Pick<typeof import("ssh2"), "Server" | "utils">;
  hostKey: string;
  /** The environment's keys, as sent for this connection (OpenSSH's authorized_keys lines). */
  authorizedKeys: string[];
  backend: SshBackend;
  /** The client proved it holds a key: its SHA256 fingerprint, as ssh-keygen -l prints it. */
  accepted(fingerprint: string): void;
  debug(message: string, err: unknown): void;
}

/**
 * Serves SSH on `socket` (one tunnel). Public keys only; agent, X11 and remote forwarding are
 * refused. The connection counts as activity and ends once the environment no longer runs as it
 * did (stopped, deleted, restarted): checked every 2 s.
 */
export function serveSsh(socket: Duplex, o: ServeOptions): void {
  const keys = o.authorizedKeys.map((k) => o.ssh2.utils.parseKey(k)).filter((k): k is ParsedKey => !(k instanceof Error));
  // OpenSSH prefers chacha20-poly1305, which ssh2 computes in JavaScript without its optional
  // native addon (about a seventh of AES's speed here); AES runs in OpenSSL.
  const algorithms = { cipher: { remove: "chacha20-poly1305@openssh.com" } } as unknown as Algorithms;
  const server = new o.ssh2.Server({ hostKeys: [o.hostKey], ident: "RemoteGPU", algorithms }, (client) => {
    const watch = setInterval(() => {
      o.backend.touch();
      void o.backend.current().then((now) => now || client.end());
    }, 2000);
    client.once("close", () => clearInterval(watch));
    // Proving a key takes a few round trips; a client that has not in 60 s is let go.
    const login = setTimeout(() => client.end(), 60_000);
    serve(client, keys, o, (fingerprint) => {
      clearTimeout(login);
      o.accepted(fingerprint);
    });
  });
  server.injectSocket(socket as unknown as net.Socket);
}

function serve(client: Connection, keys: ParsedKey[], o: ServeOptions, accepted: (fingerprint: string) => void): void {
  const { backend } = o;
  client.on("error", (err) => o.debug("ssh connection error", err));
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
      let pty: Pty | undefined;
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
      const start = (channel: ServerChannel, program: Program, withPty: Pty | undefined) => {
        void backend
          .current()
          .then((now) => {
            if (!now) throw new Error("the environment is no longer running here");
            return backend.start(program, withPty, env);
          })
          .then((started) => {
            resize = (rows, cols) => started.resize(rows, cols);
            relay(started, channel, Boolean(withPty));
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
      void backend
        .current()
        .then((now) => (now ? backend.forward(info.destIP, info.destPort) : undefined))
        .catch(() => undefined)
        .then((remote) => {
          if (!remote) return reject();
          const channel = accept();
          channel.pipe(remote).pipe(channel);
          channel.on("close", () => remote.destroy());
          remote.on("close", () => channel.close());
          remote.on("error", () => channel.close());
        });
    });
    // Remote forwarding (ssh -R) would open a port where the environment runs: refused.
    client.on("request", (_accept, reject) => reject?.());
  });
}

/** Joins a session's program to its channel: input, output, errors, the exit status, and the end. */
function relay(program: SessionProgram, channel: ServerChannel, pty: boolean): void {
  program.stdout.pipe(channel, { end: false });
  if (pty) program.stderr.pipe(channel, { end: false });
  else program.stderr.pipe(channel.stderr, { end: false });
  channel.pipe(program.stdin);
  program.stdin.on("error", () => undefined);
  let exited = false;
  const drained = (s: Readable) => finished(s).catch(() => undefined);
  void Promise.all([program.exited, drained(program.stdout), drained(program.stderr)]).then(([status]) => {
    exited = true;
    if (status.message) channel.stderr.write(`remotegpu: ${status.message}\n`);
    if ("code" in status) channel.exit(status.code);
    else channel.exit(status.signal, false, "");
    channel.end();
  });
  // The client went away: what it started goes too.
  channel.once("close", () => exited || program.hangUp());
}
