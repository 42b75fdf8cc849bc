import { LockMode, raw, type FilterQuery } from "@mikro-orm/core";
import type { EntityManager, MikroORM } from "@mikro-orm/postgresql";
import type { AuditNote } from "../audit/audit-trail.js";
import { Environment } from "../environment/environment.js";
import { WorkspaceFile } from "../storage/workspace-file.js";
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError } from "../errors.js";
import { checkId } from "../ids.js";
import { decodePageToken, encodePageToken, pageSize, type Page } from "../pagination.js";
import type { Clock } from "../platform/clock.js";
import { onUniqueViolation } from "../platform/unique-violation.js";
import { Violations, checkLabels, checkString } from "../validation.js";
import { ResourceQuota, Workspace } from "./workspace.js";

export interface WorkspaceInput {
  name: string;
  displayName: string;
  labels: Record<string, string>;
}

export interface WorkspaceFilter {
  labels: Record<string, string>;
  /** Only this workspace (what a workspace token may see). */
  onlyId?: string;
}

export type WorkspacePatch = Partial<Pick<WorkspaceInput, "displayName" | "labels">>;

export const UPDATABLE_WORKSPACE_FIELDS = ["display_name", "labels"] as const;

const SLUG = /^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** What a workspace holds outside its own rows, for DeleteWorkspace. */
export interface WorkspaceContents {
  /** Stops and deletes its environments and files through their normal paths (with force); resolves once none are left. */
  empty(workspaceId: string): Promise<void>;
  /** Removes what it keeps in object storage beyond files (archived logs), just before it goes. */
  purge(workspaceId: string): Promise<void>;
}

const NOTHING: WorkspaceContents = { empty: async () => undefined, purge: async () => undefined };

/** Workspaces: the teams that share the fleet. */
export class WorkspaceRegistry {
  constructor(
    private readonly orm: MikroORM,
    private readonly clock: Clock,
    private readonly contents: WorkspaceContents = NOTHING,
  ) {}

  /** Creates a workspace with an unlimited quota. */
  async create(input: WorkspaceInput, note: AuditNote): Promise<Workspace> {
    const v = new Violations();
    checkString(v, "name", input.name, {
      required: true,
      max: 63,
      pattern: SLUG,
      patternHint: "lowercase letters, digits and '-', starting with a letter, not ending with '-'",
    });
    checkString(v, "display_name", input.displayName, { max: 200 });
    checkLabels(v, "labels", input.labels);
    v.throwIfAny();

    const now = this.clock.now();
    return onUniqueViolation(
      () =>
        this.orm.em.fork().transactional(async (em) => {
          const workspace = em.create(Workspace, {
            ...input,
            displayName: input.displayName || input.name,
            createdAt: now,
            updatedAt: now,
          });
          em.create(ResourceQuota, { workspace, updatedAt: now });
          note(em, { workspaceId: workspace.id, targetId: workspace.id });
          return workspace;
        }),
      (c) => (c === "workspaces_name_unique" ? new AlreadyExistsError("workspace", `named "${input.name}"`) : undefined),
    );
  }

  async get(id: string): Promise<Workspace> {
    return this.find(this.orm.em.fork(), id);
  }

  /** Ordered by name. */
  async list(filter: WorkspaceFilter, size: number, token: string): Promise<Page<Workspace>> {
    const limit = pageSize(size);
    const after = decodePageToken(token, filter, ["string"]);
    const where: FilterQuery<Workspace>[] = [];
    if (filter.onlyId) where.push({ id: filter.onlyId });
    if (Object.keys(filter.labels).length > 0) {
      // jsonb containment treats every key as data and can use an index.
      where.push({ id: { $in: raw("(select id from workspaces where labels @> ?::jsonb)", [JSON.stringify(filter.labels)]) } });
    }
    const em = this.orm.em.fork();
    const [rows, totalSize] = await Promise.all([
      em.find(
        Workspace,
        { $and: after ? [...where, { name: { $gt: after[0] as string } }] : where },
        { orderBy: { name: "asc" }, limit: limit + 1 },
      ),
      em.count(Workspace, { $and: where }),
    ]);
    const items = rows.slice(0, limit);
    const nextPageToken = rows.length > limit ? encodePageToken([items[items.length - 1]!.name], filter) : "";
    return { items, nextPageToken, totalSize };
  }

  /** Changes the fields named in `fields` (update-mask paths) to their values in `patch`. */
  async update(id: string, patch: WorkspacePatch, fields: string[], note: AuditNote): Promise<Workspace> {
    if (fields.length === 0)
      throw InvalidArgumentError.field("update_mask", `name at least one of: ${UPDATABLE_WORKSPACE_FIELDS.join(", ")}`);
    const v = new Violations();
    for (const f of fields)
      v.check(
        (UPDATABLE_WORKSPACE_FIELDS as readonly string[]).includes(f),
        "update_mask",
        `"${f}" cannot be updated; allowed: ${UPDATABLE_WORKSPACE_FIELDS.join(", ")}`,
      );
    if (patch.displayName !== undefined) checkString(v, "workspace.display_name", patch.displayName, { max: 200 });
    if (patch.labels !== undefined) checkLabels(v, "workspace.labels", patch.labels);
    v.throwIfAny();

    return this.orm.em.fork().transactional(async (em) => {
      const workspace = await this.find(em, id, LockMode.PESSIMISTIC_WRITE);
      if (patch.displayName !== undefined) workspace.displayName = patch.displayName || workspace.name;
      if (patch.labels !== undefined) workspace.labels = patch.labels;
      workspace.updatedAt = this.clock.now();
      note(em, { workspaceId: workspace.id, targetId: workspace.id });
      return workspace;
    });
  }

  /**
   * Deletes a workspace with its quota and tokens. Refused while it has environments (or files),
   * unless `force`: they are then stopped and deleted first, through the normal environment path.
   */
  async delete(id: string, force: boolean, note: AuditNote): Promise<void> {
    const workspaceId = checkId("id", id);
    const check = async (em: EntityManager, workspace: Workspace) => {
      const [environments, files] = await Promise.all([em.count(Environment, { workspace }), em.count(WorkspaceFile, { workspace })]);
      if (environments + files > 0) {
        throw new FailedPreconditionError(
          `workspace "${workspace.name}" still has ${environments} environment(s) and ${files} file(s); delete them first or pass force`,
        );
      }
    };
    const workspace = await this.get(workspaceId);
    if (force) await this.contents.empty(workspaceId);
    else await check(this.orm.em.fork(), workspace);
    await this.contents.purge(workspaceId);
    await this.orm.em.fork().transactional(async (em) => {
      // The quota row first, as every reservation takes it: the cascade below would otherwise take
      // it after the workspace row, the other way round from a concurrent CreateEnvironment.
      await em
        .getConnection()
        .execute("select 1 from resource_quotas where workspace_id = ? for update", [workspaceId], "all", em.getTransactionContext());
      const locked = await this.find(em, workspaceId, LockMode.PESSIMISTIC_WRITE);
      await check(em, locked);
      note(em, { workspaceId: locked.id, targetId: locked.id });
      await em.nativeDelete(Workspace, { id: locked.id });
    });
  }

  private async find(em: EntityManager, id: string, lockMode?: LockMode): Promise<Workspace> {
    const workspace = await em.findOne(Workspace, checkId("id", id), lockMode ? { lockMode } : {});
    if (!workspace) throw new NotFoundError("workspace", id);
    return workspace;
  }
}
