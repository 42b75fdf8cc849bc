import { strict as assert } from "node:assert";
import { Code, ConnectError } from "@connectrpc/connect";
import { durationFromMs, timestampDate } from "@bufbuild/protobuf/wkt";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { ApiTokenRole, WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import type { ManualClock } from "../../src/platform/clock.js";
import { FakeAgent } from "../support/fake-agent.js";
import { startTestServer, type TestServer } from "../support/server.js";

/** The gRPC code a call failed with, or "ok". */
async function outcome(call: Promise<unknown>): Promise<string> {
  try {
    await call;
    return "ok";
  } catch (err) {
    return Code[ConnectError.from(err).code]!;
  }
}

describe("token rotation without an outage", () => {
  let server: TestServer;
  let clock: ManualClock;

  before(async () => {
    server = await startTestServer();
    clock = server.clock as ManualClock;
  });
  after(() => server.close());

  const heartbeat = (token: string, hostId: string) => server.client(HostService, { token }).heartbeat({ hostId });

  it("RotateHostToken: the old agent token works through the grace, then is refused; zero grace ends it at once", async () => {
    const hosts = server.client(HostService);
    const { host, agentToken: first } = await hosts.createHost({ name: "rotating", address: "10.1.0.1" });
    const rotated = await hosts.rotateHostToken({ hostId: host!.id, grace: durationFromMs(60_000) });
    assert.match(rotated.agentToken, /^rgpu_/);
    assert.equal(timestampDate(rotated.previousExpireTime!).getTime(), clock.now().getTime() + 60_000);
    assert.equal(await outcome(heartbeat(first, host!.id)), "ok", "the old token, within the grace");
    assert.equal(await outcome(heartbeat(rotated.agentToken, host!.id)), "ok");
    clock.advance(60_001);
    assert.equal(await outcome(heartbeat(first, host!.id)), "Unauthenticated", "the old token, after it");
    assert.equal(await outcome(heartbeat(rotated.agentToken, host!.id)), "ok");

    const now = await hosts.rotateHostToken({ hostId: host!.id, grace: durationFromMs(0) });
    assert.equal(await outcome(heartbeat(rotated.agentToken, host!.id)), "Unauthenticated", "revoked at once");
    assert.equal(await outcome(heartbeat(now.agentToken, host!.id)), "ok");
    // Without a grace: an hour.
    const later = await hosts.rotateHostToken({ hostId: host!.id });
    assert.equal(timestampDate(later.previousExpireTime!).getTime(), clock.now().getTime() + 3_600_000);
    assert.equal(await outcome(hosts.rotateHostToken({ hostId: host!.id, grace: durationFromMs(31 * 86_400_000) })), "InvalidArgument");
    assert.equal(await outcome(hosts.rotateHostToken({ hostId: "00000000-0000-4000-8000-000000000000" })), "NotFound");
    // Only cluster admins rotate.
    assert.equal(
      await outcome(server.client(HostService, { token: now.agentToken }).rotateHostToken({ hostId: host!.id })),
      "PermissionDenied",
    );
  });

  it("revoked at once, the old token's open agent stream ends too (UNAVAILABLE), and cannot be opened again", async () => {
    const hosts = server.client(HostService);
    const { host, agentToken } = await hosts.createHost({ name: "leaked", address: "10.1.0.2" });
    const stream = new FakeAgent(server, agentToken);
    assert.equal((await stream.hello(host!.id, [])).message.case, "welcome");
    const { agentToken: fresh } = await hosts.rotateHostToken({ hostId: host!.id, grace: durationFromMs(0) });
    await assert.rejects(stream.next(), (err: unknown) => ConnectError.from(err).code === Code.Unavailable);
    stream.close();
    await assert.rejects(
      new FakeAgent(server, agentToken).hello(host!.id, []),
      (err: unknown) => ConnectError.from(err).code === Code.Unauthenticated,
    );
    const again = new FakeAgent(server, fresh);
    assert.equal((await again.hello(host!.id, [])).message.case, "welcome");
    again.close();
  });

  it("cluster admin tokens: created, used, listed without secrets, replaced with an overlap, revoked", async () => {
    const ws = server.client(WorkspaceService);
    const { apiToken, secret } = await ws.createAdminToken({ name: "ops" });
    assert.equal(apiToken!.clusterAdmin, true);
    assert.equal(apiToken!.workspaceId, "");
    const asOps = server.client(HostService, { token: secret });
    assert.equal(await outcome(asOps.listHosts({})), "ok");
    assert.equal(await outcome(ws.createAdminToken({ name: "ops" })), "AlreadyExists");

    const replacement = await ws.createAdminToken({ name: "ops", replaceGrace: durationFromMs(300_000) });
    const listed = (await ws.listAdminTokens({})).apiTokens.filter((t) => t.name === "ops");
    assert.deepEqual(listed.map((t) => t.id).sort(), [apiToken!.id, replacement.apiToken!.id].sort());
    assert.equal(await outcome(asOps.listHosts({})), "ok", "the old one, within the overlap");
    clock.advance(300_001);
    assert.equal(await outcome(asOps.listHosts({})), "Unauthenticated");
    const asNew = server.client(HostService, { token: replacement.secret });
    assert.equal(await outcome(asNew.listHosts({})), "ok");
    await ws.revokeAdminToken({ tokenId: replacement.apiToken!.id });
    assert.equal(await outcome(asNew.listHosts({})), "Unauthenticated", "revoked");
    assert.equal(
      (await ws.listAdminTokens({})).apiTokens.some((t) => t.name === "ops"),
      false,
      "inactive ones only on request",
    );
    assert.equal((await ws.listAdminTokens({ showInactive: true })).apiTokens.filter((t) => t.name === "ops").length, 2);

    // A workspace admin may not mint cluster admins.
    const { workspace } = await ws.createWorkspace({ name: "tenant" });
    const wsAdmin = await ws.createApiToken({ workspaceId: workspace!.id, name: "boss", role: ApiTokenRole.ADMIN });
    assert.equal(
      await outcome(server.client(WorkspaceService, { token: wsAdmin.secret }).createAdminToken({ name: "escalate" })),
      "PermissionDenied",
    );
  });

  it("workspace tokens: replaced under the same name, both working through the overlap", async () => {
    const ws = server.client(WorkspaceService);
    const { workspace } = await ws.createWorkspace({ name: "ci-team" });
    const make = (replaceMs?: number) =>
      ws.createApiToken({
        workspaceId: workspace!.id,
        name: "ci",
        role: ApiTokenRole.MEMBER,
        replaceGrace: replaceMs === undefined ? undefined : durationFromMs(replaceMs),
      });
    const old = await make();
    assert.equal(await outcome(make()), "AlreadyExists", "without replace_grace, as before");
    const fresh = await make(120_000);
    const list = (token: string) => server.client(WorkspaceService, { token }).getWorkspace({ id: workspace!.id });
    assert.equal(await outcome(list(old.secret)), "ok");
    assert.equal(await outcome(list(fresh.secret)), "ok");
    clock.advance(120_001);
    assert.equal(await outcome(list(old.secret)), "Unauthenticated");
    assert.equal(await outcome(list(fresh.secret)), "ok");
    assert.equal(await outcome(make(-1)), "InvalidArgument");
  });
});
