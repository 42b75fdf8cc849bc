import { spawn } from "node:child_process";
import { homedir } from "node:os";
import path from "node:path";
import { Channel, EnvironmentDesiredState, EnvironmentStatus, listAll, type Environment } from "@remotegpu/sdk";
import { collect, isId, PAGE_SIZE, UsageError, type Cli } from "./connection.js";

/** ssh-config's Host names: `ssh rgpu.NAME`. */
const HOST_PREFIX = "rgpu.";

/** An environment by id, by name, or by `rgpu.NAME` (what OpenSSH passes as %h or %n). */
async function resolve(cli: Cli, ref: string | undefined): Promise<Environment> {
  if (!ref) throw new UsageError("an ENVIRONMENT (name or id) is required");
  const name = ref.startsWith(HOST_PREFIX) ? ref.slice(HOST_PREFIX.length) : ref;
  if (isId(name)) return (await cli.client.environments.getEnvironment({ id: name })).environment!;
  const found = (await collect(listAll(cli.client.environments.listEnvironments, { pageSize: PAGE_SIZE }))).filter((e) => e.name === name);
  if (found.length === 0) throw new UsageError(`no environment named "${name}" that this token can see`);
  if (found.length > 1) throw new UsageError(`${found.length} environments are named "${name}" (in different workspaces): use the id`);
  return found[0]!;
}

/**
 * `ssh --stdio ENVIRONMENT`: joins stdin and stdout to the environment's SSH server through the
 * control plane, for OpenSSH's ProxyCommand. Ends when either side does.
 */
export async function sshStdioCommand(cli: Cli, ref: string | undefined): Promise<void> {
  const env = await resolve(cli, ref);
  const requests = new Channel<{ environmentId?: string; data: Uint8Array }>();
  requests.push({ environmentId: env.id, data: new Uint8Array(0) });
  process.stdin.on("data", (chunk: Buffer) => requests.push({ data: chunk }));
  process.stdin.on("end", () => requests.close());
  for await (const m of cli.client.environments.openSshTunnel(requests, { signal: cli.signal })) {
    if (!process.stdout.write(m.data)) await new Promise((resolve) => process.stdout.once("drain", resolve));
  }
  process.stdin.pause();
}

/** How OpenSSH reaches an environment through this CLI: the options of `ssh` and of ssh-config. */
function sshOptions(cli: Cli, env: Environment): Record<string, string> {
  // This same program, with the same server; the token goes through the environment (REMOTEGPU_TOKEN), never argv.
  // (execArgv: run from a checkout, the loader of the TypeScript sources.)
  const self = [process.execPath, ...process.execArgv, process.argv[1]!].map((a) => (/\s/.test(a) ? `"${a}"` : a)).join(" ");
  // The host key is the agent's, one per host: kept under the host's id. ("%" is ProxyCommand's escape.)
  return {
    ProxyCommand: `${self} --url '${cli.url.replace(/%/g, "%%")}' ssh --stdio %h`,
    HostKeyAlias: `${HOST_PREFIX}host-${env.hostId}`,
    UserKnownHostsFile: path.join(homedir(), ".remotegpu", "known_hosts"),
    StrictHostKeyChecking: "accept-new",
  };
}

/** `ssh ENVIRONMENT [-- SSH_ARGS]`: an interactive OpenSSH session, through the control plane. */
export async function sshCommand(cli: Cli, ref: string | undefined, sshArgs: string[]): Promise<number> {
  const env = await resolve(cli, ref);
  if (env.status !== EnvironmentStatus.RUNNING)
    throw new UsageError(`environment "${env.name}" is ${EnvironmentStatus[env.status]}, not RUNNING`);
  const options = Object.entries(sshOptions(cli, env)).flatMap(([k, v]) => ["-o", `${k}=${v}`]);
  // ssh reads options after the destination too; what follows them is the remote command.
  const child = spawn("ssh", [...options, env.id, ...sshArgs], { stdio: "inherit", env: { ...process.env, REMOTEGPU_TOKEN: cli.token } });
  return new Promise((resolve, reject) => {
    child.once("error", (err) => reject(new Error(`cannot run ssh (install OpenSSH's client): ${err.message}`)));
    child.once("exit", (code) => resolve(code ?? 255));
  });
}

/** `ssh-config`: a Host block per environment this token can see, for ~/.ssh/config. */
export async function sshConfigCommand(cli: Cli): Promise<void> {
  const envs = await collect(listAll(cli.client.environments.listEnvironments, { pageSize: PAGE_SIZE }));
  const blocks = envs
    .filter((e) => e.desiredState !== EnvironmentDesiredState.DELETED)
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((env) => {
      const lines = Object.entries(sshOptions(cli, env)).map(([k, v]) => `  ${k} ${v}`);
      return [`Host ${HOST_PREFIX}${env.name}`, `  HostName ${env.id}`, ...lines].join("\n");
    });
  cli.out(`# RemoteGPU environments: ssh ${HOST_PREFIX}NAME (the ProxyCommand reads REMOTEGPU_TOKEN)\n${blocks.join("\n\n")}\n`);
}
