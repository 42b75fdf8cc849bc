import { timestampDate } from "@bufbuild/protobuf/wkt";
import { LogStream } from "../../gen/remotegpu/v1/environment_pb.js";
import { UsageError, type Cli } from "./connection.js";

/** `logs ENV_ID [--follow] [--tail N]`: the last lines, then (with --follow) new ones until Ctrl-C. */
export async function logsCommand(cli: Cli, environmentId: string | undefined, opts: { follow: boolean; tail?: string }): Promise<void> {
  if (!environmentId) throw new UsageError("an ENV_ID is required");
  const tailLines = opts.tail === undefined ? 0 : Number(opts.tail);
  if (!Number.isInteger(tailLines) || tailLines < 0) throw new UsageError("--tail: a whole number of lines");
  try {
    for await (const r of cli.environments.streamLogs({ environmentId, tailLines, follow: opts.follow }, { signal: cli.signal, timeoutMs: 0 })) {
      for (const l of r.lines) {
        const time = l.time ? timestampDate(l.time).toISOString() : "";
        const stream = LogStream[l.stream].toLowerCase();
        cli.out(cli.json ? JSON.stringify({ time, stream, text: l.text }) : `${time} ${stream.padEnd(6)} ${l.text}`);
      }
    }
  } catch (err) {
    if (!cli.signal.aborted) throw err; // Ctrl-C ends a follow; that is not an error
  }
}
