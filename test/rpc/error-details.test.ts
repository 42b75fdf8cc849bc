// Errors carry typed google.rpc details (ErrorInfo, BadRequest, QuotaFailure, RetryInfo) on every
// protocol, so callers read fields instead of parsing English; plain grpc-js clients find them in
// grpc-status-details-bin.
import { strict as assert } from "node:assert";
import { anyUnpack, durationMs } from "@bufbuild/protobuf/wkt";
import { create, createRegistry, fromBinary, isMessage, toBinary } from "@bufbuild/protobuf";
import { Code, type ConnectError } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
  file_google_rpc_error_details,
} from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { EnvironmentService } from "../../gen/remotegpu/v1/environment_pb.js";
import { GetHostRequestSchema, GetHostResponseSchema, HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { ManualClock } from "../../src/platform/clock.js";
import { expectCode } from "../support/expect.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

const PROTOCOLS = ["connect", "grpc", "grpc-web"] as const;

describe("error details on the wire", () => {
  let server: TestServer;
  let clock: ManualClock;
  let workspaceId: string;

  before(async () => {
    clock = new ManualClock(new Date("2026-12-01T00:00:00Z"));
    server = await startTestServer({ clock, env: { RATE_LIMIT_PER_SECOND: "20" } });
    workspaceId = (await server.client(WorkspaceService).createWorkspace({ name: "details" })).workspace!.id;
  });
  after(() => server.close());
  // A full rate-limit bucket for every test; only the rate-limit test empties it.
  beforeEach(() => clock.advance(10_000));

  const infoOf = (err: ConnectError) => {
    const infos = err.findDetails(ErrorInfoSchema);
    assert.equal(infos.length, 1, `one ErrorInfo in ${err.rawMessage}`);
    assert.equal(infos[0]!.domain, "remotegpu");
    return infos[0]!;
  };

  it("names every bad field in a BadRequest, each field once, on every protocol", async () => {
    for (const protocol of PROTOCOLS) {
      const hosts = server.client(HostService, { protocol });
      const err = await expectCode(hosts.createHost({ name: "", address: "not an address!" }), Code.InvalidArgument);
      assert.equal(infoOf(err).reason, "INVALID_ARGUMENT", protocol);
      const [bad] = err.findDetails(BadRequestSchema);
      const fields = bad!.fieldViolations.map((v) => v.field);
      assert.ok(fields.includes("name") && fields.includes("address"), `${protocol}: ${fields.join(", ")}`);
      assert.equal(new Set(fields).size, fields.length, `${protocol}: a field named twice: ${fields.join(", ")}`);
      for (const v of bad!.fieldViolations) assert.ok(v.description !== "", `${protocol}: ${v.field} has a description`);
    }
    // An empty path breaks two rules; the caller hears of the first only.
    const files = server.client(WorkspaceService);
    const err = await expectCode(files.deleteFile({ workspaceId, path: "" }), Code.InvalidArgument);
    assert.equal(err.rawMessage, "path: required");
    assert.deepEqual(
      err.findDetails(BadRequestSchema)[0]!.fieldViolations.map((v) => [v.field, v.description]),
      [["path", "required"]],
    );
  });

  it("says what was not found in ErrorInfo", async () => {
    const id = "00000000-0000-4000-8000-000000000001";
    for (const protocol of PROTOCOLS) {
      const err = await expectCode(server.client(HostService, { protocol }).getHost({ id }), Code.NotFound);
      const info = infoOf(err);
      assert.equal(info.reason, "NOT_FOUND");
      assert.deepEqual({ ...info.metadata }, { kind: "host", id });
    }
  });

  it("describes a quota refusal in ErrorInfo and QuotaFailure", async () => {
    await server.client(WorkspaceService).setResourceQuota({ quota: { workspaceId, maxEnvironments: 0 } });
    for (const protocol of PROTOCOLS) {
      const envs = server.client(EnvironmentService, { protocol });
      const err = await expectCode(envs.createEnvironment({ workspaceId, name: "over", image: "img" }), Code.ResourceExhausted);
      const info = infoOf(err);
      assert.equal(info.reason, "QUOTA_EXCEEDED");
      assert.deepEqual({ ...info.metadata }, { dimension: "max_environments", limit: "0", in_use: "0", requested: "1" });
      const [failure] = err.findDetails(QuotaFailureSchema);
      assert.equal(failure!.violations.length, 1);
      const v = failure!.violations[0]!;
      assert.equal(v.quotaId, "max_environments");
      assert.equal(v.quotaValue, 0n);
      assert.equal(v.description, err.rawMessage);
    }
    await server.client(WorkspaceService).setResourceQuota({ quota: { workspaceId } });
  });

  it("gives a rate-limited call one wait: message, RetryInfo, ErrorInfo and headers agree", async () => {
    for (const protocol of PROTOCOLS) {
      clock.advance(10_000);
      const hosts = server.client(HostService, { protocol });
      // A burst of twice the rate goes through; the clock stands still, so the next one waits 50 ms.
      for (let i = 0; i < 40; i++) await hosts.listHosts({});
      const err = await expectCode(hosts.listHosts({}), Code.ResourceExhausted);
      const info = infoOf(err);
      assert.equal(info.reason, "RATE_LIMITED");
      const waitMs = Number(info.metadata.retry_after_ms);
      assert.equal(waitMs, 50, protocol);
      assert.equal(info.metadata.limit_per_second, "20");
      assert.equal(durationMs(err.findDetails(RetryInfoSchema)[0]!.retryDelay!), waitMs);
      assert.match(err.rawMessage, new RegExp(`retry after ${waitMs} ms$`));
      assert.equal(err.metadata.get("retry-after-ms"), String(waitMs));
      assert.equal(err.metadata.get("retry-after"), "1", "whole seconds, rounded up");
      assert.equal(err.findDetails(QuotaFailureSchema)[0]!.violations[0]!.quotaValue, 20n);
    }
  });

  it("reaches plain grpc-js clients in grpc-status-details-bin", async () => {
    const client = new grpc.Client(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
    try {
      const metadata = new grpc.Metadata();
      metadata.set("authorization", `Bearer ${ADMIN_TOKEN}`);
      const id = "00000000-0000-4000-8000-000000000002";
      const err = await new Promise<grpc.ServiceError>((resolve, reject) =>
        client.makeUnaryRequest(
          "/remotegpu.v1.HostService/GetHost",
          (m: ReturnType<typeof create<typeof GetHostRequestSchema>>) => Buffer.from(toBinary(GetHostRequestSchema, m)),
          (b: Buffer) => fromBinary(GetHostResponseSchema, b),
          create(GetHostRequestSchema, { id }),
          metadata,
          { deadline: Date.now() + 10_000 },
          (e) => (e ? resolve(e) : reject(new Error("the call succeeded"))),
        ),
      );
      assert.equal(err.code, grpc.status.NOT_FOUND);
      const [bin] = err.metadata.get("grpc-status-details-bin");
      assert.ok(bin instanceof Buffer, "grpc-status-details-bin is sent");
      const status = fromBinary(StatusSchema, bin);
      assert.equal(status.code, grpc.status.NOT_FOUND);
      assert.equal(status.message, err.details);
      const registry = createRegistry(file_google_rpc_error_details);
      const details = status.details.map((d) => anyUnpack(d, registry));
      assert.equal(details.length, 1);
      const info = details[0];
      assert.ok(isMessage(info, ErrorInfoSchema), `an ErrorInfo, not ${info?.$typeName}`);
      assert.deepEqual([info.reason, info.domain, { ...info.metadata }], ["NOT_FOUND", "remotegpu", { kind: "host", id }]);
    } finally {
      client.close();
    }
  });
});
