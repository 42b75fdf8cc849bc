import { followLogs, LogStream, timestampDate } from "@remotegpu/sdk";
import { UsageError, type Cli } from "./connection.js";

/** `logs ENV_ID [--follow] [--tail N]`: the last lines, then (with --follow) new ones until Ctrl-C. */
export async function logsCommand(cli: Cli, environmentId: string | undefined, opts: { follow: boolean; tail?: string }): Promise<void> {
  if (!environmentId) throw new UsageError("an ENV_ID is required");
  // 0 asks for the server's default tail.
  const tailLines = opts.tail === undefined ? 0 : Number(opts.tail);
  if (!Number.isInteger(tailLines) || tailLines < 0) throw new UsageError("--tail: a whole number of lines");
  // Ctrl-C aborts the signal; followLogs then ends without an error.
  for await (const l of followLogs(cli.client, environmentId, { tailLines, follow: opts.follow, signal: cli.signal })) {
    const time = l.time ? timestampDate(l.time).toISOString() : "";
    const stream = LogStream[l.stream].toLowerCase();
    cli.out(cli.json ? JSON.stringify({ time, stream, text: l.text }) : `${time} ${stream.padEnd(6)} ${l.text}`);
  }
}
