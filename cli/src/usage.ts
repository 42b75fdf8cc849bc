import { listAll, NotFoundError, type Workspace } from "@remotegpu/sdk";
import { isId, PAGE_SIZE, UsageError, type Cli } from "./connection.js";
import { bytes, percent, table } from "./table.js";

/** A workspace by id or by name. */
export async function resolveWorkspace(cli: Cli, ref: string | undefined): Promise<Workspace> {
  if (!ref) throw new UsageError("a WORKSPACE (name or id) is required");
  if (isId(ref)) return (await cli.client.workspaces.getWorkspace({ id: ref })).workspace!;
  for await (const ws of listAll(cli.client.workspaces.listWorkspaces, { pageSize: PAGE_SIZE })) if (ws.name === ref) return ws;
  throw new NotFoundError(`no workspace named "${ref}"`);
}

interface Dimension {
  name: string;
  used: number;
  limit: number | undefined;
  show: (n: number) => string;
}

/** `usage WORKSPACE`: each quota dimension, used against its limit. */
export async function usageCommand(cli: Cli, ref: string | undefined): Promise<void> {
  const ws = await resolveWorkspace(cli, ref);
  const { usage, quota } = await cli.client.workspaces.getUsage({ workspaceId: ws.id });
  const u = usage!;
  const q = quota!;
  const num = (n: bigint | number | undefined) => (n === undefined ? undefined : Number(n));
  const count = (n: number) => String(n);
  const cores = (m: number) => `${m / 1000} cores`;
  const models = [...new Set([...Object.keys(q.maxGpusPerModel), ...Object.keys(u.gpusPerModel)])].sort();
  const dims: Dimension[] = [
    { name: "gpus", used: u.gpus, limit: q.maxGpus, show: count },
    ...models.map((m) => ({ name: `gpus: ${m}`, used: u.gpusPerModel[m] ?? 0, limit: q.maxGpusPerModel[m], show: count })),
    { name: "environments", used: u.environments, limit: q.maxEnvironments, show: count },
    { name: "cpu", used: Number(u.cpuMillicores), limit: num(q.maxCpuMillicores), show: cores },
    { name: "memory", used: Number(u.memoryBytes), limit: num(q.maxMemoryBytes), show: bytes },
    { name: "storage", used: Number(u.storageBytes), limit: num(q.maxStorageBytes), show: bytes },
  ];
  if (cli.json) {
    const out = dims.map((d) => ({
      dimension: d.name,
      used: d.used,
      limit: d.limit ?? null,
      percent: d.limit ? Math.round((d.used / d.limit) * 100) : null,
    }));
    return cli.out(JSON.stringify({ workspace: { id: ws.id, name: ws.name }, usage: out, allowedGpuModels: q.allowedGpuModels }, null, 2));
  }
  cli.out(`workspace ${ws.name} (${ws.id})`);
  cli.out(
    table(
      ["DIMENSION", "USED / LIMIT", "USE"],
      dims.map((d) => [d.name, `${d.show(d.used)} / ${d.limit === undefined ? "∞" : d.show(d.limit)}`, percent(d.used, d.limit)]),
      [1, 2],
    ),
  );
  if (q.allowedGpuModels.length > 0) cli.out(`allowed GPU models: ${q.allowedGpuModels.join(", ")}`);
}
