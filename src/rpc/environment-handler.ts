import type { MessageInitShape } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type {
  AddPortMappingRequest,
  CreateEnvironmentRequest,
  DeleteEnvironmentRequest,
  EnvironmentService,
  GetEnvironmentRequest,
  ListEnvironmentsRequest,
  ListGpuModelsRequest,
  OpenSshTunnelRequest,
  AddSshKeyRequest,
  RemoveSshKeyRequest,
  ListPortMappingsRequest,
  RemovePortMappingRequest,
  RestartEnvironmentRequest,
  StartEnvironmentRequest,
  StopEnvironmentRequest,
  StreamLogsRequest,
  StreamLogsResponseSchema,
  WatchEnvironmentsRequest,
  WatchEnvironmentsResponseSchema,
} from "../../gen/remotegpu/v1/environment_pb.js";
import { assertInWorkspace, confinedTo } from "../auth/workspace-access.js";
import type { EnvironmentLogs } from "../environment/environment-logs.js";
import type { EnvironmentManager, EnvironmentView } from "../environment/environment-manager.js";
import type { GpuModels } from "../gpu/gpu-models.js";
import type { SshTunnels } from "../environment/ssh-tunnels.js";
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from "../errors.js";
import { checkId } from "../ids.js";
import { Violations } from "../validation.js";
import { auditNote, callerOf, requestIdKey } from "./context.js";
import { dateFromMessage } from "./convert.js";
import {
  environmentInputFromMessage,
  environmentStatus,
  environmentToMessage,
  logLineToMessage,
  portFromMessage,
  portMappingToMessage,
} from "./environment-convert.js";
import { BUFFERS, everyPage, watchObjects } from "./watch.js";

type Impl = Partial<ServiceImpl<typeof EnvironmentService>>;

const DEFAULT_TAIL = 100;
const MAX_TAIL = 10_000;
const ENDED = new Set(["STOPPED", "FAILED", "DELETED"]);

/** EnvironmentService over Connect/gRPC. Environments of another workspace are NOT_FOUND for a workspace token. */
export class EnvironmentHandler implements Impl {
  constructor(
    private readonly environments: EnvironmentManager,
    private readonly logs: EnvironmentLogs,
    private readonly gpuModels: GpuModels,
    private readonly tunnels?: SshTunnels,
  ) {}

  async *openSshTunnel(requests: AsyncIterable<OpenSshTunnelRequest>, ctx: HandlerContext) {
    const caller = callerOf(ctx);
    const messages = requests[Symbol.asyncIterator]();
    const first = await messages.next();
    if (first.done) throw InvalidArgumentError.field("environment_id", "required in the first message");
    const environmentId = checkId("environment_id", first.value.environmentId);
    if (!this.tunnels) throw new FailedPreconditionError("this server does not serve SSH tunnels");
    const fromClient = (async function* () {
      if (first.value.data.length > 0) yield first.value.data;
      for (let m = await messages.next(); !m.done; m = await messages.next()) yield m.value.data;
    })();
    const requestId = ctx.values.get(requestIdKey);
    for await (const data of this.tunnels.connect(environmentId, caller, fromClient, ctx.signal, requestId)) yield { data };
  }

  async addSshKey(req: AddSshKeyRequest, ctx: HandlerContext) {
    checkId("environment_id", req.environmentId);
    const view = await this.environments.addSshKey(req.environmentId, req.sshPublicKey, confinedTo(callerOf(ctx)), auditNote(ctx));
    return { environment: environmentToMessage(view) };
  }

  async removeSshKey(req: RemoveSshKeyRequest, ctx: HandlerContext) {
    checkId("environment_id", req.environmentId);
    const view = await this.environments.removeSshKey(req.environmentId, req.sshPublicKey, confinedTo(callerOf(ctx)), auditNote(ctx));
    return { environment: environmentToMessage(view) };
  }

  async listGpuModels(req: ListGpuModelsRequest, ctx: HandlerContext) {
    assertInWorkspace(callerOf(ctx), req.workspaceId);
    return { models: await this.gpuModels.available(req.workspaceId) };
  }

  async createEnvironment(req: CreateEnvironmentRequest, ctx: HandlerContext) {
    assertInWorkspace(callerOf(ctx), req.workspaceId);
    return { environment: environmentToMessage(await this.environments.create(environmentInputFromMessage(req), auditNote(ctx))) };
  }

  async getEnvironment(req: GetEnvironmentRequest, ctx: HandlerContext) {
    return { environment: environmentToMessage(await this.environments.get(req.id, confinedTo(callerOf(ctx)))) };
  }

  async listEnvironments(req: ListEnvironmentsRequest, ctx: HandlerContext) {
    const caller = callerOf(ctx);
    if (req.workspaceId) assertInWorkspace(caller, req.workspaceId);
    const v = new Violations();
    const status = environmentStatus.toDomain(req.status, "status", v);
    v.throwIfAny();
    const filter = { workspaceId: confinedTo(caller) ?? (req.workspaceId || undefined), status, hostId: req.hostId || undefined };
    const page = await this.environments.list(filter, req.pageSize, req.pageToken);
    return { environments: page.items.map(environmentToMessage), nextPageToken: page.nextPageToken, totalSize: page.totalSize };
  }

  async startEnvironment(req: StartEnvironmentRequest, ctx: HandlerContext) {
    return { environment: environmentToMessage(await this.environments.start(req.id, confinedTo(callerOf(ctx)), auditNote(ctx))) };
  }

  async stopEnvironment(req: StopEnvironmentRequest, ctx: HandlerContext) {
    return { environment: environmentToMessage(await this.environments.stop(req.id, confinedTo(callerOf(ctx)), auditNote(ctx))) };
  }

  async restartEnvironment(req: RestartEnvironmentRequest, ctx: HandlerContext) {
    return { environment: environmentToMessage(await this.environments.restart(req.id, confinedTo(callerOf(ctx)), auditNote(ctx))) };
  }

  async deleteEnvironment(req: DeleteEnvironmentRequest, ctx: HandlerContext) {
    return { environment: environmentToMessage(await this.environments.delete(req.id, confinedTo(callerOf(ctx)), auditNote(ctx))) };
  }

  async addPortMapping(req: AddPortMappingRequest, ctx: HandlerContext) {
    if (!req.port) throw InvalidArgumentError.field("port", "required");
    const v = new Violations();
    const spec = portFromMessage(v, "port", req.port);
    v.throwIfAny();
    const mapping = await this.environments.addPort(
      req.environmentId,
      spec,
      req.hostPort || undefined,
      confinedTo(callerOf(ctx)),
      auditNote(ctx),
    );
    return { portMapping: portMappingToMessage(mapping) };
  }

  async removePortMapping(req: RemovePortMappingRequest, ctx: HandlerContext) {
    await this.environments.removePort(req.environmentId, req.portMappingId, confinedTo(callerOf(ctx)), auditNote(ctx));
    return {};
  }

  async listPortMappings(req: ListPortMappingsRequest, ctx: HandlerContext) {
    return { portMappings: (await this.environments.listPorts(req.environmentId, confinedTo(callerOf(ctx)))).map(portMappingToMessage) };
  }

  /** The latest lines, then (with follow) new ones until the caller cancels or the environment ends. */
  async *streamLogs(req: StreamLogsRequest, ctx: HandlerContext): AsyncIterable<MessageInitShape<typeof StreamLogsResponseSchema>> {
    const v = new Violations();
    v.check(req.tailLines >= 0 && req.tailLines <= MAX_TAIL, "tail_lines", `must be 0 (default ${DEFAULT_TAIL}) to ${MAX_TAIL}`);
    const since = req.sinceTime && dateFromMessage(v, "since_time", req.sinceTime);
    v.throwIfAny();
    const id = checkId("environment_id", req.environmentId);
    const stop = new AbortController();
    ctx.signal.addEventListener("abort", () => stop.abort(), { once: true });
    // Subscribed before reading the tail, so no line falls between; lines the tail already had are skipped.
    const live = req.follow
      ? this.logs.appended.subscribe({ accept: (b) => b.environmentId === id, ...BUFFERS.logLines }, stop.signal)
      : undefined;
    const ends = req.follow
      ? this.environments.changes.subscribe({ accept: (c) => c.view.environment.id === id, ...BUFFERS.logEnd }, stop.signal)
      : undefined;
    try {
      const visibility = confinedTo(callerOf(ctx));
      const env = await this.environments.get(id, visibility).catch(async (err: unknown) => {
        // A deleted environment's log lives on in its archive.
        const archived =
          err instanceof NotFoundError ? await this.logs.archived(id, visibility, req.tailLines || DEFAULT_TAIL, since) : undefined;
        if (!archived) throw err;
        return archived;
      });
      if (Array.isArray(env)) {
        if (env.length > 0) yield { lines: env.map(logLineToMessage) };
        return;
      }
      const tail = await this.logs.tail(id, req.tailLines || DEFAULT_TAIL, since);
      if (tail.length > 0) yield { lines: tail.map(logLineToMessage) };
      if (!live || !ends || ENDED.has(env.environment.status)) return;
      let last = BigInt(tail.at(-1)?.id ?? "0");
      void (async () => {
        for await (const { item } of ends) if (ENDED.has(item.view.environment.status)) break;
        stop.abort();
      })().catch(() => stop.abort());
      for await (const { item } of live) {
        const fresh = item.lines.filter((l) => !l.id || BigInt(l.id) > last);
        if (fresh.length === 0) continue;
        last = BigInt(fresh.at(-1)!.id ?? last);
        yield { lines: fresh.map(logLineToMessage) };
      }
    } finally {
      stop.abort();
    }
  }

  /** The current state first (INITIAL events), then every change, until the caller cancels. */
  async *watchEnvironments(
    req: WatchEnvironmentsRequest,
    ctx: HandlerContext,
  ): AsyncIterable<MessageInitShape<typeof WatchEnvironmentsResponseSchema>> {
    const caller = callerOf(ctx);
    if (req.workspaceId) assertInWorkspace(caller, req.workspaceId);
    const workspaceId = confinedTo(caller) ?? (req.workspaceId ? checkId("workspace_id", req.workspaceId) : undefined);
    const environmentId = req.environmentId ? checkId("environment_id", req.environmentId) : undefined;
    yield* watchObjects({
      changes: this.environments.changes,
      accept: (view) =>
        (!workspaceId || view.environment.workspace.id === workspaceId) && (!environmentId || view.environment.id === environmentId),
      current: () => this.currentEnvironments(workspaceId, environmentId),
      toEvent: (type, view) => ({ type, environment: environmentToMessage(view) }),
      signal: ctx.signal,
    });
  }

  private async *currentEnvironments(workspaceId: string | undefined, environmentId: string | undefined): AsyncIterable<EnvironmentView> {
    if (environmentId) yield await this.environments.get(environmentId, workspaceId);
    else yield* everyPage((size, token) => this.environments.list({ workspaceId }, size, token));
  }
}
