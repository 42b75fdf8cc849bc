import { spawn } from "node:child_process";
import { Duplex } from "node:stream";
import ssh2 from "ssh2";
import { eventually } from "./eventually.js";

/**
 * Opens a pty shell in an environment with ssh2's client (OpenSSH's cannot be told to change its
 * window from a script) over the CLI's `ssh --stdio`, asks `stty size`, changes the window to
 * 50 × 132 and asks again. Returns the two sizes the shell saw.
 */
export async function sizesAcrossWindowChange(
  cli: string,
  url: string,
  environment: string,
  token: string,
  privateKey: string,
): Promise<[string, string]> {
  const proxy = spawn(cli, ["--url", url, "ssh", "--stdio", environment], {
    env: { ...process.env, REMOTEGPU_TOKEN: token },
    stdio: ["pipe", "pipe", "ignore"],
  });
  const client = new ssh2.Client();
  try {
    await new Promise<void>((resolve, reject) => {
      client.once("ready", resolve).once("error", reject);
      client.connect({
        sock: Duplex.from({ readable: proxy.stdout, writable: proxy.stdin }) as never,
        username: "user",
        privateKey,
        readyTimeout: 30_000,
      });
    });
    const shell = await new Promise<ssh2.ClientChannel>((resolve, reject) =>
      client.shell({ term: "xterm", rows: 24, cols: 80 }, (err, stream) => (err ? reject(err) : resolve(stream))),
    );
    let output = "";
    shell.on("data", (d: Buffer) => (output += d.toString()));
    const size = async (marker: string) => {
      shell.write(`echo ${marker}-$(stty size)-end\n`);
      const pattern = new RegExp(`${marker}-(\\d+ \\d+)-end`);
      return (await eventually(`the shell's answer to ${marker}`, async () => pattern.exec(output)?.[1]))!;
    };
    const before = await size("first");
    shell.setWindow(50, 132, 0, 0);
    // A window change has no answer: ask until the shell sees the new size (or the wait gives up).
    let after = "";
    await eventually("the new window size", async () => {
      after = await size(`after${Date.now()}`);
      return after === "50 132";
    }).catch(() => undefined);
    shell.end("exit\n");
    return [before, after];
  } finally {
    client.end();
    proxy.kill();
  }
}
