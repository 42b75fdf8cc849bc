#!/usr/bin/env node
import { parseArgs } from "node:util";
import { RemoteGpuError } from "@remotegpu/sdk";
import { connect, UsageError } from "./connection.js";
import { hostActionCommand, hostsCommand } from "./hosts.js";
import { logsCommand } from "./logs.js";
import { sshCommand, sshConfigCommand, sshStdioCommand } from "./ssh.js";
import { topCommand } from "./top.js";
import { usageCommand } from "./usage.js";

// The RemoteGPU admin CLI: `remotegpu COMMAND ...` once @remotegpu/cli is installed; from a checkout
// `npm run cli -- COMMAND ...` or `bin/remotegpu COMMAND ...`.
const USAGE = `usage: remotegpu [--url URL] [--token TOKEN] [--json] COMMAND [ARGS]

commands:
  hosts                             hosts with their GPUs at a glance
  cordon HOST | uncordon HOST       stop / resume placing new work on a host (name or id)
  drain HOST                        cordon, mark DRAINING, show what still runs there
  usage WORKSPACE                   a workspace's usage against its quota (name or id)
  logs ENV_ID [--follow] [--tail N] an environment's log; --follow until Ctrl-C
  top [--host HOST] [--once]        live GPU telemetry table until Ctrl-C; --once prints one snapshot
  ssh ENVIRONMENT [-- SSH_ARGS]     OpenSSH into a running environment, through the control plane
  ssh --stdio ENVIRONMENT           the tunnel on stdin/stdout, for ssh's ProxyCommand
  ssh-config                        a ~/.ssh/config Host block (rgpu.NAME) per environment

options:
  --url URL      the control plane (env REMOTEGPU_URL; default http://localhost:8080)
  --token TOKEN  an admin or workspace token (env REMOTEGPU_TOKEN)
  --json         JSON for scripts instead of tables (logs and top without --once: one object a line)
  -h, --help     this text`;

const options = {
  url: { type: "string" },
  token: { type: "string" },
  json: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
  follow: { type: "boolean", short: "f", default: false },
  tail: { type: "string" },
  host: { type: "string" },
  once: { type: "boolean", default: false },
  stdio: { type: "boolean", default: false },
} as const;

/** Which command takes which of its own flags. */
const COMMAND_FLAGS: Record<string, string[]> = {
  hosts: [],
  cordon: [],
  uncordon: [],
  drain: [],
  usage: [],
  logs: ["follow", "tail"],
  top: ["host", "once"],
  ssh: ["stdio"],
  "ssh-config": [],
};

async function main(argv: string[]): Promise<number> {
  // After "--", arguments go to ssh as they are.
  const dashes = argv.indexOf("--");
  const sshArgs = dashes >= 0 ? argv.slice(dashes + 1) : [];
  const { values, positionals } = parseArgs({ args: dashes >= 0 ? argv.slice(0, dashes) : argv, options, allowPositionals: true });
  const [command, arg, ...extra] = positionals;
  if (values.help || command === "help") {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (!command || !(command in COMMAND_FLAGS)) throw new UsageError(command ? `unknown command "${command}"` : "a COMMAND is required");
  for (const flag of ["follow", "tail", "host", "once", "stdio"] as const) {
    const given = values[flag] !== undefined && values[flag] !== false;
    if (given && !COMMAND_FLAGS[command]!.includes(flag)) throw new UsageError(`--${flag} does not apply to ${command}`);
  }
  const takesArg = !["hosts", "top", "ssh-config"].includes(command);
  if (sshArgs.length > 0 && (command !== "ssh" || values.stdio))
    throw new UsageError('arguments after "--" go to ssh: only for ssh without --stdio');
  if (extra.length > 0 || (!takesArg && arg !== undefined)) throw new UsageError(`too many arguments for ${command}`);

  const url = values.url ?? process.env.REMOTEGPU_URL ?? "http://localhost:8080";
  if (!/^https?:\/\/[^/]+\/?$/.test(url)) throw new UsageError(`--url: "${url}" is not an http(s)://host:port URL`);
  const token = values.token ?? process.env.REMOTEGPU_TOKEN;
  // Every call needs one; saying so here beats an "unauthenticated" from the server.
  if (!token) throw new UsageError("a token is required: --token TOKEN or REMOTEGPU_TOKEN");
  // Ctrl-C ends logs --follow and top cleanly (exit 0); any other command just stops.
  const interrupted = new AbortController();
  const interrupt = () => (command === "logs" || command === "top" || command === "ssh" ? interrupted.abort() : process.exit(130));
  process.once("SIGINT", interrupt);
  process.once("SIGTERM", interrupt);
  const cli = connect({ url, token, json: values.json, signal: interrupted.signal });

  switch (command) {
    case "hosts":
      await hostsCommand(cli);
      break;
    case "cordon":
    case "uncordon":
    case "drain":
      await hostActionCommand(cli, command, arg);
      break;
    case "usage":
      await usageCommand(cli, arg);
      break;
    case "logs":
      await logsCommand(cli, arg, { follow: values.follow, tail: values.tail });
      break;
    case "top":
      await topCommand(cli, { host: values.host, once: values.once });
      break;
    case "ssh":
      if (values.stdio) await sshStdioCommand(cli, arg);
      else return sshCommand(cli, arg, sshArgs);
      break;
    case "ssh-config":
      await sshConfigCommand(cli);
      break;
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    // The SDK turns every failed call into a RemoteGpuError whose message is the server's own.
    if (err instanceof RemoteGpuError) {
      process.stderr.write(`remotegpu: ${err.codeName}: ${err.message}\n`);
      process.exit(1);
    }
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`remotegpu: ${message}\n`);
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith("ERR_PARSE_ARGS")) {
      process.stderr.write("run remotegpu --help for usage\n");
      process.exit(2);
    }
    process.exit(1);
  },
);
