import { GpuStatus, HostStatus, listAll, NotFoundError, timestampDate, type Gpu, type Host } from "@remotegpu/sdk";
import { collect, isId, PAGE_SIZE, UsageError, type Cli } from "./connection.js";
import { age, table } from "./table.js";

const GPU_STATUSES = [GpuStatus.AVAILABLE, GpuStatus.ALLOCATED, GpuStatus.UNHEALTHY, GpuStatus.OFFLINE];

/** Every GPU, or a host's. */
export const allGpus = (cli: Cli, hostId = "") => collect(listAll(cli.client.gpus.listGpus, { pageSize: PAGE_SIZE, hostId }));

/** A host by id or by name. */
export async function resolveHost(cli: Cli, ref: string | undefined): Promise<Host> {
  if (!ref) throw new UsageError("a HOST (name or id) is required");
  if (isId(ref)) return (await cli.client.hosts.getHost({ id: ref })).host!;
  for await (const host of listAll(cli.client.hosts.listHosts, { pageSize: PAGE_SIZE })) if (host.name === ref) return host;
  throw new NotFoundError(`no host named "${ref}"`);
}

/** `hosts`: every host with its GPUs at a glance. */
export async function hostsCommand(cli: Cli): Promise<void> {
  const [hosts, gpus] = await Promise.all([collect(listAll(cli.client.hosts.listHosts, { pageSize: PAGE_SIZE })), allGpus(cli)]);
  const counts = new Map<string, Map<GpuStatus, number>>();
  for (const g of gpus) {
    const c = counts.get(g.hostId) ?? new Map<GpuStatus, number>();
    c.set(g.status, (c.get(g.status) ?? 0) + 1);
    counts.set(g.hostId, c);
  }
  const now = new Date();
  const rows = hosts.map((h) => {
    const c = counts.get(h.id);
    const lastHeartbeat = h.lastHeartbeatTime && timestampDate(h.lastHeartbeatTime);
    return {
      id: h.id,
      name: h.name,
      status: HostStatus[h.status],
      schedulable: h.schedulable,
      gpus: {
        free: h.availableGpuCount,
        total: h.gpuCount,
        ...Object.fromEntries(GPU_STATUSES.map((s) => [GpuStatus[s].toLowerCase(), c?.get(s) ?? 0])),
      } as Record<string, number>,
      agentVersion: h.agentVersion,
      lastHeartbeatTime: lastHeartbeat?.toISOString() ?? null,
      heartbeatAge: age(lastHeartbeat || undefined, now),
      statusMessage: h.statusMessage,
      runtimeUnavailableReason: h.runtimeUnavailableReason,
    };
  });
  if (cli.json)
    return cli.out(
      JSON.stringify(
        rows.map(({ heartbeatAge: _, ...r }) => r),
        null,
        2,
      ),
    );
  if (rows.length === 0) return cli.out("no hosts");
  cli.out(
    table(
      ["NAME", "STATUS", "SCHEDULABLE", "GPUS FREE", "AVAILABLE", "ALLOCATED", "UNHEALTHY", "OFFLINE", "AGENT", "HEARTBEAT"],
      rows.map((r) => [
        r.name,
        r.status,
        r.schedulable ? "yes" : "no",
        `${r.gpus.free}/${r.gpus.total}`,
        ...GPU_STATUSES.map((s) => String(r.gpus[GpuStatus[s].toLowerCase()])),
        r.agentVersion || "-",
        r.heartbeatAge,
      ]),
      [3, 4, 5, 6, 7],
    ),
  );
  // Under the table: an ONLINE, schedulable host that takes nothing needs its reason in view.
  for (const r of rows) if (r.runtimeUnavailableReason) cli.out(`${r.name} cannot run environments: ${r.runtimeUnavailableReason}`);
}

/** `cordon`, `uncordon`, `drain`. */
export async function hostActionCommand(cli: Cli, action: "cordon" | "uncordon" | "drain", ref: string | undefined): Promise<void> {
  const { id, name } = await resolveHost(cli, ref);
  const hosts = cli.client.hosts;
  if (action === "drain") {
    const { host: drained, allocatedGpus, environmentIds } = await hosts.drainHost({ id });
    const held = allocatedGpus.map((g: Gpu) => `#${g.index} ${g.holder || g.environmentId}`);
    if (cli.json) {
      const { status, schedulable } = drained!;
      return cli.out(JSON.stringify({ id, name, status: HostStatus[status], schedulable, allocatedGpus: held, environmentIds }, null, 2));
    }
    cli.out(`host ${name} is draining: no new work is placed there`);
    if (held.length === 0 && environmentIds.length === 0) return cli.out("nothing left on it: drained");
    cli.out(`still allocated: ${held.length} GPU(s)${held.length ? ` (${held.join(", ")})` : ""}`);
    cli.out(`still running: ${environmentIds.length} environment(s)${environmentIds.length ? ` (${environmentIds.join(", ")})` : ""}`);
    return;
  }
  const host = (action === "cordon" ? await hosts.cordonHost({ id }) : await hosts.uncordonHost({ id })).host!;
  if (cli.json) return cli.out(JSON.stringify({ id, name, status: HostStatus[host.status], schedulable: host.schedulable }, null, 2));
  cli.out(`host ${name} ${action}ed: ${host.schedulable ? "schedulable" : "unschedulable"}, ${HostStatus[host.status]}`);
}
