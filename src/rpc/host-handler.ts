import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type {
  AcceptSshTunnelRequest,
  CordonHostRequest,
  CreateHostRequest,
  DeleteHostRequest,
  DrainHostRequest,
  GetHostRequest,
  HeartbeatRequest,
  HostService,
  ListHostsRequest,
  RotateHostTokenRequest,
  StreamHeartbeatsRequest,
  StreamHeartbeatsResponseSchema,
  UncordonHostRequest,
  UpdateHostRequest,
  WatchHostsRequest,
  WatchHostsResponseSchema,
} from "../../gen/remotegpu/v1/host_pb.js";
import { assertMaySpeakForHost } from "../auth/authenticator.js";
import type { SshTunnels } from "../environment/ssh-tunnels.js";
import { InvalidArgumentError, NotFoundError } from "../errors.js";
import { checkId } from "../ids.js";
import type { AgentSessions } from "../host/agent-sessions.js";
import type { HostPatch, HostRegistry, HostView } from "../host/host-registry.js";
import type { Clock } from "../platform/clock.js";
import type { Logger } from "../platform/logger.js";
import { Violations, parseLabelSelector, required } from "../validation.js";
import { AgentStream, IGNORED_REPORTS, type AgentStreamDeps, type WorkloadReports } from "./agent-stream.js";
import { auditNote, callerOf } from "./context.js";
import {
  capacityFromMessage,
  gpuMetricsFromMessage,
  gpuToMessage,
  hostRuntime,
  hostSampleFromMessage,
  hostStatus,
  hostToMessage,
  msFromMessage,
} from "./convert.js";
import { everyPage, watchObjects } from "./watch.js";

export type { WorkloadReports } from "./agent-stream.js";

type Impl = Partial<ServiceImpl<typeof HostService>>;

/** HostService over Connect/gRPC: convert, call the registry, convert back. */
/** How long a host's earlier agent tokens keep working after RotateHostToken, unless it says. */
const DEFAULT_TOKEN_GRACE_MS = 3_600_000;

export class HostHandler implements Impl {
  /** What each agent stream is built with. */
  private readonly streams: AgentStreamDeps;

  constructor(
    private readonly hosts: HostRegistry,
    private readonly agents: AgentSessions,
    private readonly clock: Clock,
    private readonly heartbeatIntervalMs: number,
    logger: Logger,
    workloads: WorkloadReports = IGNORED_REPORTS,
    ackSeconds?: AgentStreamDeps["ackSeconds"],
    private readonly tunnels?: SshTunnels,
  ) {
    this.streams = { agents, workloads, clock, logger, ackSeconds };
  }

  async *acceptSshTunnel(requests: AsyncIterable<AcceptSshTunnelRequest>, ctx: HandlerContext) {
    const caller = callerOf(ctx);
    // Only a host's agent has tunnels to accept; for anyone else (a cluster admin) there is none.
    const hostId = caller.kind === "host" ? caller.hostId : "";
    const messages = requests[Symbol.asyncIterator]();
    const first = await messages.next();
    if (first.done) throw InvalidArgumentError.field("tunnel_id", "required in the first message");
    const tunnelId = checkId("tunnel_id", first.value.tunnelId);
    if (!this.tunnels || !hostId) throw new NotFoundError("ssh tunnel", tunnelId);
    const fromAgent = (async function* () {
      yield first.value;
      for (let m = await messages.next(); !m.done; m = await messages.next()) yield m.value;
    })();
    for await (const data of await this.tunnels.accept(tunnelId, hostId, fromAgent, ctx.signal)) yield { data };
  }

  async createHost(req: CreateHostRequest, ctx: HandlerContext) {
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
    const { view, agentToken } = await this.hosts.create(input, auditNote(ctx));
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

  async updateHost(req: UpdateHostRequest, ctx: HandlerContext) {
    const v = new Violations();
    const h = req.host;
    const paths = req.updateMask?.paths ?? [];
    if (!h) v.add("host", "required");
    const patch: HostPatch = {};
    for (const path of paths) {
      if (path === "address") patch.address = h?.address;
      else if (path === "labels") patch.labels = h?.labels;
      else if (path === "kubernetes_node_name") patch.kubernetesNodeName = h?.kubernetesNodeName;
      else if (path === "capacity") Object.assign(patch, capacityFromMessage(v, "host.capacity", h?.capacity));
      else if (path === "runtime") patch.runtime = hostRuntime.toDomain(h?.runtime ?? 0, "host.runtime", v) ?? required(v, "host.runtime");
      else if (path === "status") patch.status = hostStatus.toDomain(h?.status ?? 0, "host.status", v) ?? required(v, "host.status");
    }
    v.throwIfAny();
    return { host: hostToMessage(await this.hosts.update(h!.id, patch, paths, auditNote(ctx))) };
  }

  async deleteHost(req: DeleteHostRequest, ctx: HandlerContext) {
    await this.hosts.delete(req.id, auditNote(ctx));
    return {};
  }

  async rotateHostToken(req: RotateHostTokenRequest, ctx: HandlerContext) {
    const v = new Violations();
    const graceMs = req.grace ? msFromMessage(v, "grace", req.grace) : DEFAULT_TOKEN_GRACE_MS;
    v.throwIfAny();
    const { agentToken, previousUntil } = await this.hosts.rotateToken(req.hostId, graceMs, auditNote(ctx));
    // Revoked at once: a stream opened with the old token (perhaps a leaked one) ends now too.
    if (graceMs === 0) this.agents.reconnect(req.hostId, "the host's agent token was revoked; reconnect with the new one");
    return { agentToken, previousExpireTime: timestampFromDate(previousUntil) };
  }

  async cordonHost(req: CordonHostRequest, ctx: HandlerContext) {
    return { host: hostToMessage(await this.hosts.cordon(req.id, auditNote(ctx))) };
  }

  async uncordonHost(req: UncordonHostRequest, ctx: HandlerContext) {
    return { host: hostToMessage(await this.hosts.uncordon(req.id, auditNote(ctx))) };
  }

  async drainHost(req: DrainHostRequest, ctx: HandlerContext) {
    const report = await this.hosts.drain(req.id, auditNote(ctx));
    this.agents.send(report.view.host.id, { kind: "drain" });
    return {
      host: hostToMessage(report.view),
      allocatedGpus: report.allocatedGpus.map(gpuToMessage),
      environmentIds: report.environmentIds,
    };
  }

  async heartbeat(req: HeartbeatRequest, ctx: HandlerContext) {
    assertMaySpeakForHost(callerOf(ctx), req.hostId);
    if (req.gpuSamples.length > 64) throw InvalidArgumentError.field("gpu_samples", "at most 64 samples");
    await this.hosts.heartbeat(req.hostId, req.agentVersion);
    const now = this.clock.now();
    const gpus = req.gpuSamples.map((g) => ({ gpuUuid: g.gpuUuid, index: g.index, time: now, metrics: gpuMetricsFromMessage(g.metrics) }));
    await this.agents.report(req.hostId.toLowerCase(), req.hostSample && hostSampleFromMessage(req.hostSample), gpus);
    return {
      host: hostToMessage(await this.hosts.get(req.hostId)),
      heartbeatInterval: durationFromMs(this.heartbeatIntervalMs),
      leaseTtl: durationFromMs(this.hosts.heartbeatGraceMs),
    };
  }

  /** Current hosts first (INITIAL), then every change, until the caller cancels. */
  async *watchHosts(req: WatchHostsRequest, ctx: HandlerContext): AsyncIterable<MessageInitShape<typeof WatchHostsResponseSchema>> {
    const only = req.hostId;
    yield* watchObjects({
      changes: this.hosts.changes,
      accept: (view) => !only || view.host.id === only,
      current: () => this.currentHosts(only),
      toEvent: (type, view) => ({ type, host: hostToMessage(view) }),
      signal: ctx.signal,
    });
  }

  private async *currentHosts(only: string): AsyncIterable<HostView> {
    if (only) yield await this.hosts.get(only);
    else yield* everyPage((size, token) => this.hosts.list({ labels: {} }, size, token));
  }

  /** The agent stream: one AgentStream per connection. */
  streamHeartbeats(
    requests: AsyncIterable<StreamHeartbeatsRequest>,
    ctx: HandlerContext,
  ): AsyncIterable<MessageInitShape<typeof StreamHeartbeatsResponseSchema>> {
    // Handed on as it is: a generator around it would add a pending promise per message.
    return new AgentStream(this.streams, callerOf(ctx), requests).run();
  }
}
