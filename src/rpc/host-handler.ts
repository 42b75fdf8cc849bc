import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type {
  CordonHostRequest,
  CreateHostRequest,
  DeleteHostRequest,
  DrainHostRequest,
  GetHostRequest,
  HeartbeatRequest,
  HostService,
  ListHostsRequest,
  UncordonHostRequest,
  UpdateHostRequest,
} from "../../gen/remotegpu/v1/host_pb.js";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { assertMaySpeakForHost } from "../auth/authenticator.js";
import type { HostRegistry } from "../host/host-registry.js";
import { Violations, parseLabelSelector } from "../validation.js";
import { callerOf } from "./context.js";
import { capacityFromMessage, gpuToMessage, hostRuntime, hostSampleFromMessage, hostStatus, hostToMessage } from "./convert.js";

type Impl = Partial<ServiceImpl<typeof HostService>>;

/** HostService over Connect/gRPC: convert, call the registry, convert back. */
export class HostHandler implements Impl {
  constructor(
    private readonly hosts: HostRegistry,
    private readonly heartbeatIntervalMs: number,
  ) {}

  async createHost(req: CreateHostRequest) {
    const v = new Violations();
    const input = {
      name: req.name,
      address: req.address,
      labels: req.labels,
      ...capacityFromMessage(v, "capacity", req.capacity),
      runtime: hostRuntime.toDomain(req.runtime, "runtime", v) ?? "AGENT",
      kubernetesNodeName: req.kubernetesNodeName,
    };
    v.throwIfAny();
    const { view, agentToken } = await this.hosts.create(input);
    return { host: hostToMessage(view), agentToken };
  }

  async getHost(req: GetHostRequest) {
    return { host: hostToMessage(await this.hosts.get(req.id)) };
  }

  async listHosts(req: ListHostsRequest) {
    const v = new Violations();
    const status = hostStatus.toDomain(req.status, "status", v);
    v.throwIfAny();
    const filter = { status, labels: parseLabelSelector("label_selector", req.labelSelector), schedulable: req.schedulable };
    const page = await this.hosts.list(filter, req.pageSize, req.pageToken);
    return { hosts: page.items.map(hostToMessage), nextPageToken: page.nextPageToken, totalSize: page.totalSize };
  }

  async updateHost(req: UpdateHostRequest) {
    const v = new Violations();
    const h = req.host;
    if (!h) v.add("host", "required");
    const patch = {
      name: "",
      address: h?.address ?? "",
      labels: h?.labels ?? {},
      ...capacityFromMessage(v, "host.capacity", h?.capacity),
      runtime: hostRuntime.toDomain(h?.runtime ?? 0, "host.runtime", v) ?? "AGENT",
      kubernetesNodeName: h?.kubernetesNodeName ?? "",
      status: hostStatus.toDomain(h?.status ?? 0, "host.status", v) ?? "OFFLINE",
    };
    v.throwIfAny();
    return { host: hostToMessage(await this.hosts.update(h!.id, patch, req.updateMask?.paths ?? [])) };
  }

  async deleteHost(req: DeleteHostRequest) {
    await this.hosts.delete(req.id);
    return {};
  }

  async cordonHost(req: CordonHostRequest) {
    return { host: hostToMessage(await this.hosts.cordon(req.id)) };
  }

  async uncordonHost(req: UncordonHostRequest) {
    return { host: hostToMessage(await this.hosts.uncordon(req.id)) };
  }

  async drainHost(req: DrainHostRequest) {
    const report = await this.hosts.drain(req.id);
    return {
      host: hostToMessage(report.view),
      allocatedGpus: report.allocatedGpus.map((gpu) => gpuToMessage({ gpu })),
      environmentIds: report.environmentIds,
    };
  }

  async heartbeat(req: HeartbeatRequest, ctx: HandlerContext) {
    assertMaySpeakForHost(callerOf(ctx), req.hostId);
    const view = await this.hosts.heartbeat(req.hostId, req.agentVersion, req.hostSample && hostSampleFromMessage(req.hostSample));
    return {
      host: hostToMessage(view),
      heartbeatInterval: durationFromMs(this.heartbeatIntervalMs),
      leaseTtl: durationFromMs(this.hosts.heartbeatGraceMs),
    };
  }
}
