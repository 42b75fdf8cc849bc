import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type {
  GetCallerRequest,
  CreateAdminTokenRequest,
  CreateApiTokenRequest,
  CreateWorkspaceRequest,
  DeleteWorkspaceRequest,
  GetResourceQuotaRequest,
  GetUsageRequest,
  GetWorkspaceRequest,
  ListAdminTokensRequest,
  ListApiTokensRequest,
  ListAuditEventsRequest,
  ListWorkspacesRequest,
  RevokeAdminTokenRequest,
  RevokeApiTokenRequest,
  SetResourceQuotaRequest,
  UpdateWorkspaceRequest,
  WorkspaceService,
  DeleteFileRequest,
  DownloadFileRequest,
  DownloadFileResponseSchema,
  GetFileUrlRequest,
  ListFilesRequest,
  UploadFileRequest,
} from "../../gen/remotegpu/v1/workspace_pb.js";
import { FileUrlMethod } from "../../gen/remotegpu/v1/workspace_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { WorkspaceFiles } from "../storage/workspace-files.js";
import type { AuditTrail } from "../audit/audit-trail.js";
import { assertInWorkspace, confinedTo } from "../auth/workspace-access.js";
import type { WorkspaceTokens } from "../auth/workspace-tokens.js";
import { InvalidArgumentError } from "../errors.js";
import { checkId } from "../ids.js";
import { Violations, checkString, parseLabelSelector, toSafeNumber } from "../validation.js";
import type { QuotaLedger } from "../workspace/quota-ledger.js";
import type { WorkspacePatch, WorkspaceRegistry } from "../workspace/workspace-registry.js";
import { auditNote, callerOf } from "./context.js";
import { dateFromMessage } from "./convert.js";
import {
  auditEventToMessage,
  fileToMessage,
  quotaFromMessage,
  quotaToMessage,
  tokenRole,
  tokenToMessage,
  usageToMessage,
  workspaceToMessage,
} from "./workspace-convert.js";

type Impl = Partial<ServiceImpl<typeof WorkspaceService>>;

const DEFAULT_URL_MS = 15 * 60_000;

/**
 * WorkspaceService over Connect/gRPC. The access interceptor has checked the caller's role; each
 * method here checks that a workspace token names its own workspace.
 */
export class WorkspaceHandler implements Impl {
  constructor(
    private readonly workspaces: WorkspaceRegistry,
    private readonly quotas: QuotaLedger,
    private readonly tokens: WorkspaceTokens,
    private readonly audit: AuditTrail,
    private readonly files: WorkspaceFiles,
  ) {}

  /** The header first, then chunks, streamed through to the object store. */
  async uploadFile(requests: AsyncIterable<UploadFileRequest>, ctx: HandlerContext) {
    const incoming = requests[Symbol.asyncIterator]();
    const first = await incoming.next();
    if (first.done || first.value.part.case !== "header")
      throw InvalidArgumentError.field("header", "the first message must be the header");
    const h = first.value.part.value;
    assertInWorkspace(callerOf(ctx), h.workspaceId, undefined, "header.workspace_id");
    const v = new Violations();
    const sizeBytes = h.sizeBytes === undefined ? undefined : toSafeNumber(v, "header.size_bytes", h.sizeBytes);
    v.throwIfAny();
    const chunks = (async function* () {
      for (let next = await incoming.next(); !next.done; next = await incoming.next()) {
        if (next.value.part.case !== "chunk") throw InvalidArgumentError.field("header", "only the first message may be a header");
        yield next.value.part.value;
      }
    })();
    const file = await this.files.upload(
      h.workspaceId,
      { path: h.path, contentType: h.contentType, sizeBytes, overwrite: h.overwrite },
      chunks,
      auditNote(ctx),
      ctx.signal,
    );
    return { file: fileToMessage(file) };
  }

  /** The file's metadata first, then its content (or a range of it) in chunks. */
  async *downloadFile(req: DownloadFileRequest, ctx: HandlerContext): AsyncIterable<MessageInitShape<typeof DownloadFileResponseSchema>> {
    assertInWorkspace(callerOf(ctx), req.workspaceId);
    const v = new Violations();
    const offset = toSafeNumber(v, "offset", req.offset);
    const length = toSafeNumber(v, "length", req.length);
    v.throwIfAny();
    const { file, content } = await this.files.download(req.workspaceId, req.path, offset, length);
    yield { part: { case: "file", value: fileToMessage(file) } };
    for await (const chunk of content) yield { part: { case: "chunk", value: chunk } };
  }

  async listFiles(req: ListFilesRequest, ctx: HandlerContext) {
    assertInWorkspace(callerOf(ctx), req.workspaceId);
    const page = await this.files.list(req.workspaceId, req.prefix, req.pageSize, req.pageToken);
    return { files: page.items.map(fileToMessage), nextPageToken: page.nextPageToken };
  }

  async deleteFile(req: DeleteFileRequest, ctx: HandlerContext) {
    assertInWorkspace(callerOf(ctx), req.workspaceId);
    await this.files.delete(req.workspaceId, req.path, auditNote(ctx));
    return {};
  }

  /** GET is a read (viewer); PUT writes, so it needs a member. */
  async getFileUrl(req: GetFileUrlRequest, ctx: HandlerContext) {
    const put = req.method === FileUrlMethod.PUT;
    assertInWorkspace(callerOf(ctx), req.workspaceId, put ? "member" : undefined);
    const v = new Violations();
    const expiresMs = req.expiresIn ? Number(req.expiresIn.seconds) * 1000 + Math.floor(req.expiresIn.nanos / 1e6) : DEFAULT_URL_MS;
    v.check(req.method === FileUrlMethod.UNSPECIFIED || req.method === FileUrlMethod.GET || put, "method", `unknown value ${req.method}`);
    v.throwIfAny();
    const { url, expireTime } = await this.files.url(
      req.workspaceId,
      req.path,
      put ? "PUT" : "GET",
      Math.floor(expiresMs / 1000),
      auditNote(ctx),
    );
    return { url, expireTime: timestampFromDate(expireTime) };
  }

  async createWorkspace(req: CreateWorkspaceRequest, ctx: HandlerContext) {
    const workspace = await this.workspaces.create({ name: req.name, displayName: req.displayName, labels: req.labels }, auditNote(ctx));
    return { workspace: workspaceToMessage(workspace) };
  }

  async getWorkspace(req: GetWorkspaceRequest, ctx: HandlerContext) {
    assertInWorkspace(callerOf(ctx), req.id, undefined, "id");
    return { workspace: workspaceToMessage(await this.workspaces.get(req.id)) };
  }

  async listWorkspaces(req: ListWorkspacesRequest, ctx: HandlerContext) {
    const filter = { labels: parseLabelSelector("label_selector", req.labelSelector), onlyId: confinedTo(callerOf(ctx)) };
    const page = await this.workspaces.list(filter, req.pageSize, req.pageToken);
    return { workspaces: page.items.map(workspaceToMessage), nextPageToken: page.nextPageToken, totalSize: page.totalSize };
  }

  async updateWorkspace(req: UpdateWorkspaceRequest, ctx: HandlerContext) {
    const w = req.workspace;
    if (!w) throw InvalidArgumentError.field("workspace", "required");
    assertInWorkspace(callerOf(ctx), w.id, undefined, "workspace.id");
    const paths = req.updateMask?.paths ?? [];
    const patch: WorkspacePatch = {};
    if (paths.includes("display_name")) patch.displayName = w.displayName;
    if (paths.includes("labels")) patch.labels = w.labels;
    return { workspace: workspaceToMessage(await this.workspaces.update(w.id, patch, paths, auditNote(ctx))) };
  }

  async deleteWorkspace(req: DeleteWorkspaceRequest, ctx: HandlerContext) {
    await this.workspaces.delete(req.id, req.force, auditNote(ctx));
    return {};
  }

  async getResourceQuota(req: GetResourceQuotaRequest, ctx: HandlerContext) {
    assertInWorkspace(callerOf(ctx), req.workspaceId);
    return { quota: quotaToMessage(await this.quotas.get(req.workspaceId)) };
  }

  async setResourceQuota(req: SetResourceQuotaRequest, ctx: HandlerContext) {
    if (!req.quota) throw InvalidArgumentError.field("quota", "required");
    const v = new Violations();
    const limits = quotaFromMessage(v, req.quota);
    v.throwIfAny();
    return { quota: quotaToMessage(await this.quotas.set(req.quota.workspaceId, limits, auditNote(ctx))) };
  }

  async getUsage(req: GetUsageRequest, ctx: HandlerContext) {
    assertInWorkspace(callerOf(ctx), req.workspaceId);
    const { quota, usage } = await this.quotas.usage(req.workspaceId);
    return { usage: usageToMessage(usage), quota: quotaToMessage(quota) };
  }

  async createApiToken(req: CreateApiTokenRequest, ctx: HandlerContext) {
    assertInWorkspace(callerOf(ctx), req.workspaceId);
    const v = new Violations();
    const role = tokenRole.toDomain(req.role, "role", v);
    v.throwIfAny();
    // The ranges are checked with the other fields by WorkspaceTokens.
    const ttlMs = req.ttl && durationMs(req.ttl);
    const replaceGraceMs = req.replaceGrace && durationMs(req.replaceGrace);
    const { token, secret } = await this.tokens.create(req.workspaceId, { name: req.name, role, ttlMs, replaceGraceMs }, auditNote(ctx));
    return { apiToken: tokenToMessage(token), secret };
  }

  async createAdminToken(req: CreateAdminTokenRequest, ctx: HandlerContext) {
    const ttlMs = req.ttl && durationMs(req.ttl);
    const replaceGraceMs = req.replaceGrace && durationMs(req.replaceGrace);
    const { token, secret } = await this.tokens.createAdmin({ name: req.name, ttlMs, replaceGraceMs }, auditNote(ctx));
    return { apiToken: tokenToMessage(token), secret };
  }

  async listAdminTokens(req: ListAdminTokensRequest) {
    const page = await this.tokens.listAdmin(req.showInactive, req.pageSize, req.pageToken);
    return { apiTokens: page.items.map(tokenToMessage), nextPageToken: page.nextPageToken };
  }

  async revokeAdminToken(req: RevokeAdminTokenRequest, ctx: HandlerContext) {
    return { apiToken: tokenToMessage(await this.tokens.revokeAdmin(req.tokenId, auditNote(ctx))) };
  }

  async listApiTokens(req: ListApiTokensRequest, ctx: HandlerContext) {
    assertInWorkspace(callerOf(ctx), req.workspaceId);
    const page = await this.tokens.list(req.workspaceId, req.showInactive, req.pageSize, req.pageToken);
    return { apiTokens: page.items.map(tokenToMessage), nextPageToken: page.nextPageToken };
  }

  async revokeApiToken(req: RevokeApiTokenRequest, ctx: HandlerContext) {
    assertInWorkspace(callerOf(ctx), req.workspaceId);
    return { apiToken: tokenToMessage(await this.tokens.revoke(req.workspaceId, req.tokenId, auditNote(ctx))) };
  }

  /** Workspace admins see their workspace's events; cluster admins see all, or one workspace's. */
  async listAuditEvents(req: ListAuditEventsRequest, ctx: HandlerContext) {
    const caller = callerOf(ctx);
    if (req.workspaceId) assertInWorkspace(caller, req.workspaceId);
    const v = new Violations();
    checkString(v, "actor_id", req.actorId, { max: 32 });
    checkString(v, "target_id", req.targetId, { max: 128 });
    const startTime = req.startTime && dateFromMessage(v, "start_time", req.startTime);
    const endTime = req.endTime && dateFromMessage(v, "end_time", req.endTime);
    if (startTime && endTime) v.check(startTime < endTime, "end_time", "must be after start_time");
    v.throwIfAny();
    const filter = {
      workspaceId: confinedTo(caller) ?? (req.workspaceId ? checkId("workspace_id", req.workspaceId) : undefined),
      startTime,
      endTime,
      actorId: req.actorId || undefined,
      targetId: req.targetId || undefined,
    };
    const page = await this.audit.list(filter, req.pageSize, req.pageToken);
    return { events: page.items.map(auditEventToMessage), nextPageToken: page.nextPageToken };
  }

  getCaller(_req: GetCallerRequest, ctx: HandlerContext) {
    const caller = callerOf(ctx);
    if (caller.kind === "workspace") {
      return { tokenId: caller.tokenId, workspaceId: caller.workspaceId, role: tokenRole.toProto(caller.role) };
    }
    // Host tokens are refused before this (access rule "viewer"); only admins are left.
    return { tokenId: caller.tokenId, clusterAdmin: true };
  }
}

/** A Duration in milliseconds, unchecked (WorkspaceTokens checks the range with the other fields). */
function durationMs(d: { seconds: bigint; nanos: number }): number {
  return Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6);
}
