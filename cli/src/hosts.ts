import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { GpuStatus, type Gpu } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostStatus, type Host } from "../../gen/remotegpu/v1/host_pb.js";
import { isId, listAll, UsageError, type Cli } from "./connection.js";
import { age, table } from "./table.js";

const GPU_STATUSES = [GpuStatus.AVAILABLE, GpuStatus.ALLOCATED, GpuStatus.UNHEALTHY, GpuStatus.OFFLINE];

export const allHosts = (cli: Cli) => listAll(async (pageToken) => {
  const r = await cli.hosts.listHosts({ pageSize: 1000, pageToken });
  return { items: r.hosts, nextPageToken: r.nextPageToken };
});

export const allGpus = (cli: Cli, hostId = "") => listAll(async (pageToken) => {
  const r = await cli.gpus.listGpus({ pageSize: 1000, pageToken, hostId });
  return { items: r.gpus, nextPageToken: r.nextPageToken };
});

/** A host by id or by name. */
export async function resolveHost(cli: Cli, ref: string | undefined): Promise<Host> {
  if (!ref) throw new UsageError("a HOST (name or id) is required");
  if (isId(ref)) return (await cli.hosts.getHost({ id: ref })).host!;
  const host = (await allHosts(cli)).find((h) => h.name === ref);
  if (!host) throw new ConnectError(`no host named "${ref}"`, Code.NotFound);
  return host;
}

/** `hosts`: every host with its GPUs at a glance. */
export async function hostsCommand(cli: Cli): Promise<void> {
  const [hosts, gpus] = await Promise.all([allHosts(cli), allGpus(cli)]);
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
    };
  });
  if (cli.json) return cli.out(JSON.stringify(rows.map(({ heartbeatAge: _, ...r }) => r), null, 2));
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
}

/** `cordon`, `uncordon`, `drain`. */
export async function hostActionCommand(cli: Cli, action: "cordon" | "uncordon" | "drain", ref: string | undefined): Promise<void> {
  const { id, name } = await resolveHost(cli, ref);
  if (action === "drain") {
    const r = await cli.hosts.drainHost({ id });
    const held = r.allocatedGpus.map((g: Gpu) => `#${g.index} ${g.holder || g.environmentId}`);
    if (cli.json) return cli.out(JSON.stringify({ id, name, status: HostStatus[r.host!.status], schedulable: r.host!.schedulable, allocatedGpus: held, environmentIds: r.environmentIds }, null, 2));
    cli.out(`host ${name} is draining: no new work is placed there`);
    if (held.length === 0 && r.environmentIds.length === 0) return cli.out("nothing left on it: drained");
    cli.out(`still allocated: ${held.length} GPU(s)${held.length ? ` (${held.join(", ")})` : ""}`);
    cli.out(`still running: ${r.environmentIds.length} environment(s)${r.environmentIds.length ? ` (${r.environmentIds.join(", ")})` : ""}`);
    return;
  }
  const host = action === "cordon" ? (await cli.hosts.cordonHost({ id })).host! : (await cli.hosts.uncordonHost({ id })).host!;
  if (cli.json) return cli.out(JSON.stringify({ id, name, status: HostStatus[host.status], schedulable: host.schedulable }, null, 2));
  cli.out(`host ${name} ${action}ed: ${host.schedulable ? "schedulable" : "unschedulable"}, ${HostStatus[host.status]}`);
}
