// HostService and WorkspaceService through @grpc/grpc-js: a gRPC implementation independent of the
// Connect stack the server is built on, speaking plain HTTP/2 gRPC with binary protobuf.
import { strict as assert } from "node:assert";
import { randomUUID } from "node:crypto";
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  CreateHostRequestSchema,
  CreateHostResponseSchema,
  GetHostRequestSchema,
  GetHostResponseSchema,
  HeartbeatRequestSchema,
  HeartbeatResponseSchema,
  HostStatus,
  ListHostsRequestSchema,
  ListHostsResponseSchema,
} from "../../gen/remotegpu/v1/host_pb.js";
import { ListWorkspacesRequestSchema, ListWorkspacesResponseSchema } from "../../gen/remotegpu/v1/workspace_pb.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

interface Reply<O> {
  value: O;
  headers: grpc.Metadata;
}

/** The ServiceError, plus the response headers when the server sent any before the status. */
type CallError = grpc.ServiceError & { headers?: grpc.Metadata };

describe("gRPC through @grpc/grpc-js", () => {
  let server: TestServer;
  let client: grpc.Client;

  before(async () => {
    server = await startTestServer();
    client = new grpc.Client(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
  });

  after(async () => {
    client?.close();
    await server?.close();
  });

  /** One unary call; `token` null sends no authorization header. Rejects with the grpc-js ServiceError. */
  function unary<I extends DescMessage, O extends DescMessage>(
    method: string,
    input: I,
    output: O,
    request: MessageInitShape<I>,
    opts: { token?: string | null; requestId?: string } = {},
  ): Promise<Reply<MessageShape<O>>> {
    const metadata = new grpc.Metadata();
    const token = opts.token === undefined ? ADMIN_TOKEN : opts.token;
    if (token !== null) metadata.set("authorization", `Bearer ${token}`);
    if (opts.requestId) metadata.set("x-request-id", opts.requestId);
    return new Promise((resolve, reject) => {
      let headers = new grpc.Metadata();
      const call = client.makeUnaryRequest<MessageShape<I>, MessageShape<O>>(
        method,
        (m) => Buffer.from(toBinary(input, m)),
        (b) => fromBinary(output, b),
        create(input, request),
        metadata,
        { deadline: Date.now() + 10_000 },
        (err, value) => {
          if (err) reject(Object.assign(err, { headers }));
          else resolve({ value: value!, headers });
        },
      );
      call.on("metadata", (m: grpc.Metadata) => (headers = m));
    });
  }

  const createHost = (name: string, opts?: { token?: string | null }) =>
    unary("/remotegpu.v1.HostService/CreateHost", CreateHostRequestSchema, CreateHostResponseSchema, { name, address: "10.2.0.1" }, opts);
  const getHost = (id: string, opts?: { token?: string | null }) =>
    unary("/remotegpu.v1.HostService/GetHost", GetHostRequestSchema, GetHostResponseSchema, { id }, opts);
  const heartbeat = (hostId: string, token: string) =>
    unary(
      "/remotegpu.v1.HostService/Heartbeat",
      HeartbeatRequestSchema,
      HeartbeatResponseSchema,
      { hostId, agentVersion: "1.2.3" },
      { token },
    );

  async function rejectsWith(call: Promise<unknown>, code: grpc.status): Promise<CallError> {
    const err = await call.then(
      () => assert.fail(`expected ${grpc.status[code]}, the call succeeded`),
      (e: unknown) => e as CallError,
    );
    assert.equal(err.code, code, `expected ${grpc.status[code]}, got ${grpc.status[err.code]}: ${err.details}`);
    return err;
  }

  let hostA: { id: string; agentToken: string };
  let hostB: { id: string; agentToken: string };

  it("CreateHost: OK, echoes the name and returns an agent token; the response carries x-request-id", async () => {
    const { value, headers } = await createHost("grpcjs-a");
    assert.equal(value.host?.name, "grpcjs-a");
    assert.equal(value.host?.address, "10.2.0.1");
    assert.match(value.host!.id, /^[0-9a-f-]{36}$/);
    assert.match(value.agentToken, /^rgpu_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
    assert.equal(value.host?.status, HostStatus.OFFLINE, "a host is OFFLINE until its first heartbeat");
    const requestId = headers.get("x-request-id");
    assert.equal(requestId.length, 1, "one x-request-id in the response headers");
    assert.match(String(requestId[0]), /^[0-9a-f-]{36}$/);
    hostA = { id: value.host!.id, agentToken: value.agentToken };
    const b = await createHost("grpcjs-b");
    hostB = { id: b.value.host!.id, agentToken: b.value.agentToken };
    assert.notEqual(hostB.agentToken, hostA.agentToken);
  });

  it("echoes a well-formed client x-request-id", async () => {
    const { headers } = await unary(
      "/remotegpu.v1.HostService/ListHosts",
      ListHostsRequestSchema,
      ListHostsResponseSchema,
      {},
      {
        requestId: "client-chosen-id.42",
      },
    );
    assert.deepEqual(headers.get("x-request-id"), ["client-chosen-id.42"]);
  });

  it("GetHost: OK for the created host", async () => {
    const { value } = await getHost(hostA.id);
    assert.equal(value.host?.id, hostA.id);
    assert.equal(value.host?.name, "grpcjs-a");
  });

  it("GetHost: NOT_FOUND (5) for an unknown UUID, with x-request-id on the error", async () => {
    const err = await rejectsWith(getHost(randomUUID()), grpc.status.NOT_FOUND);
    // On an error the id travels in the trailers (grpc-js hands them over as err.metadata).
    const ids = err.metadata.get("x-request-id");
    assert.equal(ids.length, 1, "one x-request-id in the error trailers");
    assert.match(String(ids[0]), /^[0-9a-f-]{36}$/);
  });

  it("GetHost: INVALID_ARGUMENT (3) naming id for something that is not a UUID", async () => {
    const err = await rejectsWith(getHost("not-a-uuid"), grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /\bid\b/);
  });

  it("CreateHost: ALREADY_EXISTS (6) for a duplicate name", async () => {
    await rejectsWith(createHost("grpcjs-a"), grpc.status.ALREADY_EXISTS);
  });

  it("CreateHost: INVALID_ARGUMENT (3) naming the field for a bad name", async () => {
    const err = await rejectsWith(createHost("Bad_Name!"), grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /\bname\b/);
  });

  it("UNAUTHENTICATED (16) without a token, and for a made-up token", async () => {
    await rejectsWith(createHost("grpcjs-anon", { token: null }), grpc.status.UNAUTHENTICATED);
    await rejectsWith(getHost(hostA.id, { token: null }), grpc.status.UNAUTHENTICATED);
    await rejectsWith(getHost(hostA.id, { token: `rgpu_0123456789abcdef_${"x".repeat(43)}` }), grpc.status.UNAUTHENTICATED);
  });

  it("Heartbeat: a host's agent token may report for its own host", async () => {
    const { value } = await heartbeat(hostA.id, hostA.agentToken);
    assert.equal(value.host?.id, hostA.id);
    assert.equal(value.host?.agentVersion, "1.2.3");
    assert.equal(value.host?.status, HostStatus.ONLINE);
    assert.ok(value.heartbeatInterval, "the server tells the agent how often to report");
  });

  it("Heartbeat: PERMISSION_DENIED (7) for another host's id", async () => {
    await rejectsWith(heartbeat(hostB.id, hostA.agentToken), grpc.status.PERMISSION_DENIED);
  });

  it("an agent token may not call admin methods: ListHosts → PERMISSION_DENIED (7)", async () => {
    await rejectsWith(
      unary("/remotegpu.v1.HostService/ListHosts", ListHostsRequestSchema, ListHostsResponseSchema, {}, { token: hostA.agentToken }),
      grpc.status.PERMISSION_DENIED,
    );
  });

  it("WorkspaceService answers an admin, and UNAUTHENTICATED (16) without a token", async () => {
    const list = (token: string | null) =>
      unary("/remotegpu.v1.WorkspaceService/ListWorkspaces", ListWorkspacesRequestSchema, ListWorkspacesResponseSchema, {}, { token });
    const res = await list(ADMIN_TOKEN);
    assert.equal(res.value.totalSize, 0);
    await rejectsWith(list(null), grpc.status.UNAUTHENTICATED);
  });

  it("an unknown method is UNIMPLEMENTED (12)", async () => {
    await rejectsWith(
      unary("/remotegpu.v1.HostService/NoSuchMethod", ListHostsRequestSchema, ListHostsResponseSchema, {}),
      grpc.status.UNIMPLEMENTED,
    );
  });
});
