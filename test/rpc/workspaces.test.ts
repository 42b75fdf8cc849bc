import { strict as assert } from "node:assert";
import { Code } from "@connectrpc/connect";
import { ApiTokenRole, WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { ManualClock } from "../../src/platform/clock.js";
import { expectCode } from "../support/expect.js";
import { startTestServer, type TestServer } from "../support/server.js";

const MISSING = "00000000-0000-4000-8000-000000000000";

describe("WorkspaceService", () => {
  let server: TestServer;
  let clock: ManualClock;
  let admin: ReturnType<typeof server.client<typeof WorkspaceService>>;

  before(async () => {
    clock = new ManualClock(new Date("2026-11-30T12:00:00Z"));
    server = await startTestServer({ clock });
    admin = server.client(WorkspaceService);
  });
  after(() => server.close());

  async function workspace(name: string, labels: Record<string, string> = {}) {
    return (await admin.createWorkspace({ name, labels })).workspace!;
  }

  async function token(workspaceId: string, role: ApiTokenRole, name = `t-${role}-${Math.random()}`) {
    const res = await admin.createApiToken({ workspaceId, name, role });
    return { id: res.apiToken!.id, client: server.client(WorkspaceService, { token: res.secret }) };
  }

  it("creates, reads, updates and deletes a workspace; the name is a unique slug", async () => {
    const ws = await workspace("team-crud", { tier: "gold" });
    assert.equal(ws.displayName, "team-crud", "display name defaults to the name");
    assert.deepEqual((await admin.getWorkspace({ id: ws.id })).workspace?.labels, { tier: "gold" });
    await expectCode(admin.createWorkspace({ name: "team-crud" }), Code.AlreadyExists, "team-crud");
    const bad = await expectCode(
      admin.createWorkspace({ name: "Team_Crud", displayName: "x".repeat(201), labels: { "bad key!": "v" } }),
      Code.InvalidArgument,
    );
    for (const field of ["name", "display_name", "labels"]) assert.match(bad.rawMessage, new RegExp(field));

    const updated = await admin.updateWorkspace({
      workspace: { id: ws.id, displayName: "Team CRUD", labels: { a: "b" } },
      updateMask: { paths: ["display_name"] },
    });
    assert.equal(updated.workspace?.displayName, "Team CRUD");
    assert.deepEqual(updated.workspace?.labels, { tier: "gold" }, "fields outside the mask keep their values");
    await expectCode(
      admin.updateWorkspace({ workspace: { id: ws.id, name: "renamed" }, updateMask: { paths: ["name"] } }),
      Code.InvalidArgument,
      "update_mask",
    );

    await admin.deleteWorkspace({ id: ws.id });
    await expectCode(admin.getWorkspace({ id: ws.id }), Code.NotFound);
    await expectCode(admin.deleteWorkspace({ id: MISSING }), Code.NotFound);
    await expectCode(admin.getWorkspace({ id: "nope" }), Code.InvalidArgument, "id");
  });

  it("lists workspaces by name with label filters and pages; a workspace token sees only its own", async () => {
    for (const n of ["list-a", "list-b", "list-c", "list-d"]) await workspace(n, { group: n < "list-c" ? "one" : "two" });
    const first = await admin.listWorkspaces({ pageSize: 2, labelSelector: "group=one" });
    assert.deepEqual(
      first.workspaces.map((w) => w.name),
      ["list-a", "list-b"],
    );
    assert.equal(first.totalSize, 2);
    const all: string[] = [];
    let pageToken = "";
    do {
      const page = await admin.listWorkspaces({ pageSize: 3, pageToken });
      all.push(...page.workspaces.map((w) => w.name));
      pageToken = page.nextPageToken;
    } while (pageToken);
    assert.deepEqual(
      all.filter((n) => n.startsWith("list-")),
      ["list-a", "list-b", "list-c", "list-d"],
    );

    const b = (await admin.listWorkspaces({ labelSelector: "group=two" })).workspaces[0]!;
    const viewer = await token(b.id, ApiTokenRole.VIEWER);
    const seen = await viewer.client.listWorkspaces({});
    assert.deepEqual(
      seen.workspaces.map((w) => w.id),
      [b.id],
    );
    assert.equal(seen.totalSize, 1);
  });

  it("sets a quota, validates it, and shows usage beside it", async () => {
    const ws = await workspace("quota-team");
    const unlimited = (await admin.getResourceQuota({ workspaceId: ws.id })).quota!;
    assert.equal(unlimited.maxGpus, undefined, "a new workspace has no limits");
    const set = await admin.setResourceQuota({
      quota: {
        workspaceId: ws.id,
        maxGpus: 8,
        maxGpusPerModel: { "NVIDIA H100 80GB HBM3": 2 },
        allowedGpuModels: ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"],
        maxEnvironments: 4,
        maxCpuMillicores: 32000n,
        maxMemoryBytes: 256n << 30n,
      },
    });
    assert.equal(set.quota?.maxGpus, 8);
    assert.deepEqual(set.quota?.maxGpusPerModel, { "NVIDIA H100 80GB HBM3": 2 });
    assert.equal(set.quota?.maxStorageBytes, undefined, "an absent limit stays unlimited");

    const bad = await expectCode(
      admin.setResourceQuota({ quota: { workspaceId: ws.id, maxGpus: -1, maxGpusPerModel: { "": 1 }, maxCpuMillicores: -5n } }),
      Code.InvalidArgument,
    );
    for (const field of ["max_gpus", "max_gpus_per_model", "max_cpu_millicores"]) assert.match(bad.rawMessage, new RegExp(field));
    assert.equal((await admin.getResourceQuota({ workspaceId: ws.id })).quota?.maxGpus, 8, "a refused update changes nothing");
    await expectCode(admin.setResourceQuota({ quota: { workspaceId: MISSING } }), Code.NotFound);

    const usage = await admin.getUsage({ workspaceId: ws.id });
    assert.equal(usage.usage?.gpus, 0);
    assert.equal(usage.usage?.environments, 0);
    assert.equal(usage.quota?.maxEnvironments, 4);
  });

  it("issues workspace tokens once, lists metadata only, and revocation works from the next call", async () => {
    const ws = await workspace("token-team");
    const created = await admin.createApiToken({ workspaceId: ws.id, name: "ci", role: ApiTokenRole.MEMBER, ttl: { seconds: 3600n } });
    assert.match(created.secret, /^rgpu_[0-9a-f]{16}_/);
    assert.equal(created.apiToken?.role, ApiTokenRole.MEMBER);
    assert.equal(Number(created.apiToken!.expireTime!.seconds) * 1000, clock.now().getTime() + 3_600_000);
    await expectCode(admin.createApiToken({ workspaceId: ws.id, name: "ci", role: ApiTokenRole.VIEWER }), Code.AlreadyExists, "ci");
    await expectCode(
      admin.createApiToken({ workspaceId: ws.id, name: "", role: ApiTokenRole.UNSPECIFIED, ttl: { seconds: -1n } }),
      Code.InvalidArgument,
      "name",
      "role",
      "ttl",
    );

    const member = server.client(WorkspaceService, { token: created.secret });
    await member.getWorkspace({ id: ws.id });
    const listed = await admin.listApiTokens({ workspaceId: ws.id });
    assert.deepEqual(
      listed.apiTokens.map((t) => t.name),
      ["ci"],
    );
    assert.ok(listed.apiTokens[0]!.lastUseTime, "use is recorded");
    assert.ok(
      !JSON.stringify(listed, (_, v) => (typeof v === "bigint" ? String(v) : v)).includes(created.secret.slice(-20)),
      "no secret in the listing",
    );

    const revoked = await admin.revokeApiToken({ workspaceId: ws.id, tokenId: created.apiToken!.id });
    assert.ok(revoked.apiToken?.revokeTime);
    await expectCode(member.getWorkspace({ id: ws.id }), Code.Unauthenticated, "revoked");
    assert.deepEqual((await admin.listApiTokens({ workspaceId: ws.id })).apiTokens, [], "revoked tokens are hidden by default");
    assert.equal((await admin.listApiTokens({ workspaceId: ws.id, showInactive: true })).apiTokens.length, 1);
    // The name is free again once revoked.
    await admin.createApiToken({ workspaceId: ws.id, name: "ci", role: ApiTokenRole.VIEWER });

    const other = await workspace("token-other");
    await expectCode(admin.revokeApiToken({ workspaceId: other.id, tokenId: created.apiToken!.id }), Code.NotFound, "token");
  });

  it("stops expired tokens", async () => {
    const ws = await workspace("expiry-team");
    const created = await admin.createApiToken({ workspaceId: ws.id, name: "short", role: ApiTokenRole.VIEWER, ttl: { seconds: 60n } });
    const viewer = server.client(WorkspaceService, { token: created.secret });
    await viewer.getWorkspace({ id: ws.id });
    clock.advance(61_000);
    await expectCode(viewer.getWorkspace({ id: ws.id }), Code.Unauthenticated, "expired");
  });

  it("keeps workspace tokens inside their workspace and their role", async () => {
    const a = await workspace("iso-a");
    const b = await workspace("iso-b");
    const aAdmin = await token(a.id, ApiTokenRole.ADMIN);
    const aViewer = await token(a.id, ApiTokenRole.VIEWER);
    await expectCode(aAdmin.client.getWorkspace({ id: b.id }), Code.PermissionDenied, "another workspace");
    await expectCode(aAdmin.client.getUsage({ workspaceId: b.id }), Code.PermissionDenied);
    await expectCode(aAdmin.client.createApiToken({ workspaceId: b.id, name: "x", role: ApiTokenRole.ADMIN }), Code.PermissionDenied);
    await expectCode(aAdmin.client.setResourceQuota({ quota: { workspaceId: a.id, maxGpus: 100 } }), Code.PermissionDenied, "admin");
    await expectCode(
      aViewer.client.createApiToken({ workspaceId: a.id, name: "x", role: ApiTokenRole.ADMIN }),
      Code.PermissionDenied,
      "admin",
    );
    await expectCode(
      aViewer.client.updateWorkspace({ workspace: { id: a.id, displayName: "x" }, updateMask: { paths: ["display_name"] } }),
      Code.PermissionDenied,
    );
    await expectCode(
      server
        .client(HostService, { token: (await admin.createApiToken({ workspaceId: a.id, name: "h", role: ApiTokenRole.ADMIN })).secret })
        .listHosts({}),
      Code.PermissionDenied,
    );

    const renamed = await aAdmin.client.updateWorkspace({
      workspace: { id: a.id, displayName: "Team A" },
      updateMask: { paths: ["display_name"] },
    });
    assert.equal(renamed.workspace?.displayName, "Team A");
  });

  it("records every mutating call in the audit trail, refusals included, visible to the right people", async () => {
    const a = await workspace("audit-a");
    const b = await workspace("audit-b");
    const aAdmin = await token(a.id, ApiTokenRole.ADMIN, "a-admin");
    const bAdmin = await token(b.id, ApiTokenRole.ADMIN, "b-admin");
    await aAdmin.client.updateWorkspace({ workspace: { id: a.id, displayName: "A" }, updateMask: { paths: ["display_name"] } });
    await expectCode(aAdmin.client.setResourceQuota({ quota: { workspaceId: a.id, maxGpus: 1 } }), Code.PermissionDenied);
    await expectCode(aAdmin.client.createApiToken({ workspaceId: a.id, name: "a-admin", role: ApiTokenRole.ADMIN }), Code.AlreadyExists);
    await aAdmin.client.getWorkspace({ id: a.id }); // reads are not recorded
    await bAdmin.client.updateWorkspace({ workspace: { id: b.id, displayName: "B" }, updateMask: { paths: ["display_name"] } });

    const seenByA = (await aAdmin.client.listAuditEvents({})).events;
    assert.ok(
      seenByA.every((e) => e.workspaceId === a.id),
      "a workspace admin sees only its workspace",
    );
    const byActor = (await aAdmin.client.listAuditEvents({ actorId: aAdmin.id })).events;
    assert.deepEqual(
      byActor.map((e) => [e.method.split("/")[1], e.code]),
      [
        ["CreateApiToken", "already_exists"],
        ["SetResourceQuota", "permission_denied"],
        ["UpdateWorkspace", "ok"],
      ],
      "newest first, with the outcome",
    );
    assert.equal(byActor[2]!.actorKind, "workspace");
    assert.equal(byActor[2]!.targetId, a.id);
    assert.ok(byActor[2]!.requestId);
    await expectCode(aAdmin.client.listAuditEvents({ workspaceId: b.id }), Code.PermissionDenied);

    const all = (await admin.listAuditEvents({ pageSize: 1000 })).events;
    assert.ok(all.some((e) => e.workspaceId === b.id) && all.some((e) => e.workspaceId === a.id), "a cluster admin sees all");
    const creates = all.filter((e) => e.method.endsWith("/CreateWorkspace") && e.targetId === a.id);
    assert.equal(creates.length, 1);
    assert.equal(creates[0]!.actorKind, "admin");

    // Pages and time ranges.
    const firstPage = await admin.listAuditEvents({ workspaceId: a.id, pageSize: 2 });
    const secondPage = await admin.listAuditEvents({ workspaceId: a.id, pageSize: 2, pageToken: firstPage.nextPageToken });
    assert.equal(firstPage.events.length, 2);
    assert.ok(secondPage.events.length > 0);
    assert.ok(!secondPage.events.some((e) => firstPage.events.some((f) => f.id === e.id)), "pages do not overlap");
    const future = { seconds: BigInt(Math.floor(clock.now().getTime() / 1000) + 60), nanos: 0 };
    assert.deepEqual((await admin.listAuditEvents({ startTime: future })).events, []);
    await expectCode(admin.listAuditEvents({ workspaceId: b.id, pageToken: firstPage.nextPageToken }), Code.InvalidArgument, "page_token");
  });

  it("refuses to delete a workspace that still has environments, unless forced", async () => {
    const ws = await workspace("busy-team");
    await server.app.orm.em.getConnection().execute(
      `insert into environments (id, workspace_id, name, image, command, args, env, gpu_count, gpu_model, cpu_millicores, memory_bytes, storage_bytes, ports, ssh_public_keys, idle_timeout_minutes, desired_state, status, status_message, transitions, created_at, updated_at, version)
       values (gen_random_uuid(), ?, 'env', 'img', '[]', '[]', '{}', 0, '', 0, 0, 0, '[]', '[]', 0, 'RUNNING', 'RUNNING', '', '[]', now(), now(), 1)`,
      [ws.id],
    );
    await expectCode(admin.deleteWorkspace({ id: ws.id }), Code.FailedPrecondition, "1 environment");
    assert.equal((await admin.getWorkspace({ id: ws.id })).workspace?.name, "busy-team");
  });
});
