import { spawn } from "node:child_process";
import type net from "node:net";

/** A descriptor of a listening socket as Node hands it over (what `net.Server#listen` takes as a handle). */
export interface ListeningHandle {
  close(): void;
}

const TIMEOUT_MS = 10_000;
// Sends the handle it is given back to its parent `n` times; it ends when the parent disconnects.
const COPIER = `process.on("message", (n, handle) => {
  for (let i = 0; i < n; i++) process.send(i, handle);
});`;

/**
 * `n` more descriptors of the socket `server` listens on.
 *
 * libuv (1.45 and later; Node 20 has 1.46) accepts one connection per event-loop turn for each
 * listening handle, in the turns where that handle is among the ready ones. A server busy with
 * thousands of agent connections has long turns (up to 1,024 ready sockets each), and accepting
 * fell to about one connection a second while a fleet reconnected. Every descriptor of the socket is
 * polled on its own, so a server listening on n + 1 of them accepts up to n + 1 connections a turn.
 *
 * Node 20 cannot duplicate a descriptor (`reusePort` listeners came with 22.12), but a handle sent
 * over an IPC channel arrives as a new descriptor of the same socket (SCM_RIGHTS): a short-lived
 * child process sends the socket back `n` times. Node's `cluster` hands listening sockets to its
 * workers the same way. The child never listens on its copy, so it accepts nothing.
 */
export function copyListeningSocket(server: net.Server, n: number): Promise<ListeningHandle[]> {
  // The handle under a net.Server: what cluster sends its workers, not exposed otherwise.
  const handle = (server as unknown as { _handle?: ListeningHandle | null })._handle;
  if (!handle) return Promise.reject(new Error("the server is not listening"));
  if (n <= 0) return Promise.resolve([]);
  const copies: ListeningHandle[] = [];
  let failed = false;
  const child = spawn(process.execPath, ["-e", COPIER], { stdio: ["ignore", "ignore", "inherit", "ipc"], env: {} });
  return new Promise((resolve, reject) => {
    // The server waits for this before it reports listening: a child that hangs must not hold it.
    const timer = setTimeout(() => fail(`no copies within ${TIMEOUT_MS / 1000} s`), TIMEOUT_MS);
    child.on("message", (_i, copy: ListeningHandle) => {
      if (failed) return copy.close();
      copies.push(copy);
      if (copies.length < n) return;
      clearTimeout(timer);
      child.disconnect();
      resolve(copies);
    });
    const fail = (why: string) => {
      if (failed || copies.length === n) return;
      failed = true;
      clearTimeout(timer);
      child.kill();
      for (const copy of copies) copy.close();
      reject(new Error(`copying the listening socket failed after ${copies.length} of ${n}: ${why}`));
    };
    child.once("error", (err) => fail(err.message));
    // "close", not "exit": it comes after the last message, once the channel is closed too.
    child.once("close", (code, signal) => fail(`the copying process ended (${signal ?? code})`));
    child.send(n, handle as unknown as net.Server);
  });
}
