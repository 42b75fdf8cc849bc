// The SDK's errors read the server's google.rpc details (never the message's wording), say their
// code by name, and the retries honour a rate limit's wait; plus the small helpers around them.
import { strict as assert } from "node:assert";
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import type { Interceptor } from "@connectrpc/connect";
import {
  Code,
  codeName,
  ConnectError,
  CreateEnvironmentRequestSchema,
  createRemoteGpuClient,
  EnvironmentService,
  ErrorInfoSchema,
  GetUsageResponseSchema,
  InvalidArgumentError,
  isIdempotent,
  NotFoundError,
  PreconditionFailureSchema,
  QuotaExceededError,
  RateLimitedError,
  RemoteGpuError,
  RequestIdReusedError,
  toJson,
  toJsonString,
  WorkspaceService,
  type RemoteGpuClient,
} from "../../sdk/src/index.js";
import { toRemoteGpuError } from "../../sdk/src/errors.js";
import * as web from "../../sdk/src/web.js";
import { ManualClock } from "../../src/platform/clock.js";
import { startTestServer, ADMIN_TOKEN, type TestServer } from "../support/server.js";

async function rejection(call: Promise<unknown>): Promise<unknown> {
  return call.then(
    () => assert.fail("the call succeeded"),
    (err: unknown) => err,
  );
}

describe("SDK: typed error details, codeName, rate-limit retries, JSON", () => {
  let server: TestServer;
  let clock: ManualClock;
  let client: RemoteGpuClient;
  let workspaceId: string;

  before(async () => {
    clock = new ManualClock(new Date("2026-12-01T00:00:00Z"));
    server = await startTestServer({ clock, env: { RATE_LIMIT_PER_SECOND: "20" } });
    client = createRemoteGpuClient({ baseUrl: server.baseUrl, token: ADMIN_TOKEN, transport: "grpc" });
    workspaceId = (await client.workspaces.createWorkspace({ name: "sdk-details" })).workspace!.id;
  });
  after(async () => {
    client?.close();
    await server?.close();
  });
  beforeEach(() => clock.advance(10_000));

  it("names every code as the README does", () => {
    assert.equal(codeName(Code.InvalidArgument), "invalid_argument");
    assert.equal(codeName(Code.DeadlineExceeded), "deadline_exceeded");
    assert.equal(codeName(Code.Canceled), "canceled");
    assert.equal(codeName(Code.NotFound), "not_found");
    const err = toRemoteGpuError(new ConnectError("gone", Code.NotFound));
    assert.ok(err instanceof NotFoundError);
    assert.equal(err.codeName, "not_found");
    assert.equal(err.code, Code.NotFound);
  });

  it("fills QuotaExceededError, InvalidArgumentError and NotFoundError from the server's details", async () => {
    await client.workspaces.setResourceQuota({ quota: { workspaceId, maxEnvironments: 0 } });
    try {
      const quota = await rejection(client.environments.createEnvironment({ workspaceId, name: "over", image: "img" }));
      assert.ok(quota instanceof QuotaExceededError, String(quota));
      assert.deepEqual([quota.dimension, quota.limit, quota.inUse, quota.requested], ["max_environments", 0, 0, 1]);
      assert.equal(quota.reason, "QUOTA_EXCEEDED");
      assert.equal(quota.codeName, "resource_exhausted");
    } finally {
      await client.workspaces.setResourceQuota({ quota: { workspaceId } });
    }

    const invalid = await rejection(client.workspaces.deleteFile({ workspaceId, path: "" }));
    assert.ok(invalid instanceof InvalidArgumentError);
    assert.deepEqual(invalid.violations, [{ field: "path", description: "required" }]);
    assert.equal(invalid.codeName, "invalid_argument");

    const id = "00000000-0000-4000-8000-000000000003";
    const missing = await rejection(client.hosts.getHost({ id }));
    assert.ok(missing instanceof NotFoundError);
    assert.equal(missing.reason, "NOT_FOUND");
    assert.deepEqual(missing.info, { kind: "host", id });
  });

  it("maps REQUEST_ID_REUSED to RequestIdReusedError", () => {
    const err = toRemoteGpuError(
      new ConnectError('request_id "r-1" was already used for a different request', Code.FailedPrecondition, undefined, [
        {
          desc: ErrorInfoSchema,
          value: { reason: "REQUEST_ID_REUSED", domain: "remotegpu", metadata: { request_id: "r-1", existing_id: "e-1" } },
        },
        { desc: PreconditionFailureSchema, value: { violations: [{ type: "REQUEST_ID", subject: "r-1" }] } },
      ]),
    );
    assert.ok(err instanceof RequestIdReusedError);
    assert.equal(err.reusedRequestId, "r-1");
    assert.equal(err.existingId, "e-1");
    assert.equal(err.codeName, "failed_precondition");
  });

  it("raises RateLimitedError with the server's wait, and retries any call after it", async () => {
    const burst = async () => {
      clock.advance(10_000);
      for (let i = 0; i < 40; i++) await client.hosts.listHosts({});
    };

    await burst();
    const strict = createRemoteGpuClient({ baseUrl: server.baseUrl, token: ADMIN_TOKEN, retries: 0 });
    try {
      const err = await rejection(strict.hosts.listHosts({}));
      assert.ok(err instanceof RateLimitedError, String(err));
      assert.equal(err.retryAfter, 50);
      assert.equal(err.reason, "RATE_LIMITED");
    } finally {
      strict.close();
    }

    // The server's clock stands still: a retry gets through only once time moved on, which this
    // interceptor (run on every attempt) does, noting when each attempt went out.
    const sent: number[] = [];
    const moveOn: Interceptor = (next) => (req) => {
      if (sent.length > 0) clock.advance(50);
      sent.push(performance.now());
      return next(req);
    };
    const patient = createRemoteGpuClient({
      baseUrl: server.baseUrl,
      token: ADMIN_TOKEN,
      interceptors: [moveOn],
      retryBackoff: { initialMs: 1, maxMs: 1, multiplier: 1 },
    });
    try {
      await burst();
      // CreateWorkspace is not idempotent; a rate-limited one never ran, so it is retried too.
      const { workspace } = await patient.workspaces.createWorkspace({ name: "after-the-wait" });
      assert.equal(workspace!.name, "after-the-wait");
      assert.equal(sent.length, 2);
      assert.ok(sent[1]! - sent[0]! >= 49, `waited ${sent[1]! - sent[0]!} ms, the server asked for 50`);
    } finally {
      patient.close();
    }
  });

  it("tells a CreateEnvironment with a request id as idempotent, plain object or message", () => {
    const createEnv = EnvironmentService.method.createEnvironment;
    assert.ok(isIdempotent(createEnv, { workspaceId, name: "a", requestId: "r-1" }));
    assert.ok(isIdempotent(createEnv, { requestId: "r-1" }));
    assert.ok(!isIdempotent(createEnv, { name: "a" }));
    assert.ok(!isIdempotent(createEnv, { requestId: "" }));
    assert.ok(!isIdempotent(createEnv, undefined));
    assert.ok(!isIdempotent(WorkspaceService.method.createWorkspace, { requestId: "r-1" }));
    assert.equal(CreateEnvironmentRequestSchema.typeName, createEnv.input.typeName);
  });

  it("writes results with bigint fields as JSON through toJson/toJsonString, from both entries", async () => {
    const usage = await client.workspaces.getUsage({ workspaceId });
    assert.throws(() => JSON.stringify(usage), /BigInt/);
    const json = JSON.parse(toJsonString(GetUsageResponseSchema, usage, { alwaysEmitImplicit: true })) as {
      usage: { cpuMillicores: string };
    };
    assert.equal(json.usage.cpuMillicores, "0", "int64 is a string in protobuf JSON");
    assert.deepEqual(toJson(GetUsageResponseSchema, usage, { alwaysEmitImplicit: true }), json);
    assert.equal(web.toJsonString, toJsonString);
    assert.equal(web.RateLimitedError, RateLimitedError);
    assert.ok(new RateLimitedError("x") instanceof RemoteGpuError);
  });

  it("declares the Node versions that can require() it", async () => {
    const pkg = JSON.parse(await readFile(path.resolve(import.meta.dirname, "../../sdk/package.json"), "utf8")) as {
      engines: { node: string };
    };
    const semver = createRequire(import.meta.url)("semver") as { satisfies(version: string, range: string): boolean };
    // require() of ES modules works without a flag from 20.19 and 22.12; the CommonJS entry needs it.
    for (const version of ["20.19.0", "20.20.2", "22.12.0", "24.0.0"])
      assert.ok(semver.satisfies(version, pkg.engines.node), `${version} within ${pkg.engines.node}`);
    for (const version of ["20.0.0", "20.18.3", "21.7.3", "22.11.0"])
      assert.ok(!semver.satisfies(version, pkg.engines.node), `${version} outside ${pkg.engines.node}`);
  });
});
