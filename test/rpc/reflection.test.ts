import { strict as assert } from "node:assert";
import { execFile } from "node:child_process";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { promisify } from "node:util";
import { create, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport } from "@connectrpc/connect-node";
import {
  ServerReflection,
  ServerReflectionRequestSchema,
  type ServerReflectionRequest,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { file_remotegpu_v1_environment } from "../../gen/remotegpu/v1/environment_pb.js";
import { file_remotegpu_v1_gpu } from "../../gen/remotegpu/v1/gpu_pb.js";
import { file_remotegpu_v1_host } from "../../gen/remotegpu/v1/host_pb.js";
import { file_remotegpu_v1_workspace } from "../../gen/remotegpu/v1/workspace_pb.js";
import { HealthStatus, registerHealth } from "../../src/rpc/health.js";
import { registerReflection } from "../../src/rpc/reflection.js";

const run = promisify(execFile);
const buf = new URL("../../node_modules/.bin/buf", import.meta.url).pathname;

async function bufCurl(...args: string[]): Promise<string> {
  const { stdout } = await run(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", ...args], { timeout: 20_000 });
  return stdout;
}

describe("gRPC server reflection", () => {
  const sessions = new Set<http2.ServerHttp2Session>();
  let server: http2.Http2Server;
  let baseUrl: string;

  before(async () => {
    server = http2.createServer(
      connectNodeAdapter({
        routes(router) {
          registerReflection(router, [
            file_remotegpu_v1_host,
            file_remotegpu_v1_gpu,
            file_remotegpu_v1_workspace,
            file_remotegpu_v1_environment,
          ]);
          registerHealth(router, new HealthStatus());
        },
      }),
    );
    // Open sessions keep close() from ever finishing, so they are destroyed in after().
    server.on("session", (s) => {
      sessions.add(s);
      s.on("close", () => sessions.delete(s));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  after(async () => {
    for (const s of sessions) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  const services = [
    "remotegpu.v1.HostService",
    "remotegpu.v1.GpuService",
    "remotegpu.v1.WorkspaceService",
    "remotegpu.v1.EnvironmentService",
    "grpc.health.v1.Health",
  ];

  it("lists services to buf curl over v1", async () => {
    const listed = (await bufCurl("--list-services", baseUrl)).split("\n");
    for (const name of services) assert.ok(listed.includes(name), `${name} missing from ${listed.join(", ")}`);
  });

  it("lists services and methods to buf curl over v1alpha", async () => {
    const listed = (await bufCurl("--reflect-protocol", "grpc-v1alpha", "--list-services", baseUrl)).split("\n");
    for (const name of services) assert.ok(listed.includes(name), `${name} missing from ${listed.join(", ")}`);
    const methods = await bufCurl("--reflect-protocol", "grpc-v1alpha", "--list-methods", baseUrl);
    assert.match(methods, /^remotegpu\.v1\.HostService\/CreateHost$/m);
  });

  // buf curl only reflects from a base URL; with a service path it would post
  // the reflection call under that path. So it lists every method there is.
  it("lists methods to buf curl", async () => {
    const methods = (await bufCurl("--list-methods", baseUrl)).split("\n");
    for (const m of [
      "remotegpu.v1.HostService/CreateHost",
      "remotegpu.v1.HostService/StreamHeartbeats",
      "remotegpu.v1.GpuService/ListGpus",
    ]) {
      assert.ok(methods.includes(m), `${m} missing from ${methods.join(", ")}`);
    }
  });

  it("lets buf curl call a method using only the schema from reflection", async () => {
    const out = await bufCurl("-d", "{}", `${baseUrl}/grpc.health.v1.Health/Check`);
    assert.deepEqual(JSON.parse(out), { status: "SERVING" });
  });

  it("answers file_containing_symbol over the v1 stream", async () => {
    const client = createClient(ServerReflection, createGrpcTransport({ baseUrl }));
    const request = (r: ServerReflectionRequest["messageRequest"]) =>
      create(ServerReflectionRequestSchema, { host: "localhost", messageRequest: r });
    async function* requests() {
      yield request({ case: "fileContainingSymbol", value: "remotegpu.v1.Host" });
      yield request({ case: "fileContainingSymbol", value: "remotegpu.v1.NoSuchThing" });
      yield request({ case: "fileContainingSymbol", value: "remotegpu.v1.HostService.CreateHost" });
      yield request({ case: "fileByFilename", value: "google/protobuf/timestamp.proto" });
      yield request({ case: undefined });
    }
    const responses = [];
    for await (const res of client.serverReflectionInfo(requests())) responses.push(res);
    assert.equal(responses.length, 5);

    const [host, missing, method, timestamp, empty] = responses;
    assert.equal(host.validHost, "localhost");
    assert.equal(host.originalRequest?.messageRequest.value, "remotegpu.v1.Host");
    assert.equal(host.messageResponse.case, "fileDescriptorResponse");
    const names = host.messageResponse.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b).name);
    assert.equal(names[0], "remotegpu/v1/host.proto");
    for (const dep of ["google/protobuf/timestamp.proto", "remotegpu/v1/gpu.proto", "remotegpu/v1/agent.proto"]) {
      assert.ok(names.includes(dep), `${dep} missing from ${names.join(", ")}`);
    }
    assert.equal(new Set(names).size, names.length, "no file sent twice");

    assert.equal(missing.messageResponse.case, "errorResponse");
    assert.equal(missing.messageResponse.value.errorCode, 5);

    assert.equal(method.messageResponse.case, "fileDescriptorResponse");
    assert.equal(
      fromBinary(FileDescriptorProtoSchema, method.messageResponse.value.fileDescriptorProto[0]).name,
      "remotegpu/v1/host.proto",
    );

    assert.equal(timestamp.messageResponse.case, "fileDescriptorResponse");
    assert.equal(timestamp.messageResponse.value.fileDescriptorProto.length, 1);

    assert.equal(empty.messageResponse.case, "errorResponse");
    assert.equal(empty.messageResponse.value.errorCode, 3);
  });

  it("answers extension queries without error for known types", async () => {
    const client = createClient(ServerReflection, createGrpcTransport({ baseUrl }));
    async function* requests() {
      yield create(ServerReflectionRequestSchema, { messageRequest: { case: "allExtensionNumbersOfType", value: "remotegpu.v1.Host" } });
      yield create(ServerReflectionRequestSchema, { messageRequest: { case: "allExtensionNumbersOfType", value: "nope.Nope" } });
      yield create(ServerReflectionRequestSchema, {
        messageRequest: { case: "fileContainingExtension", value: { containingType: "remotegpu.v1.Host", extensionNumber: 1000 } },
      });
    }
    const responses = [];
    for await (const res of client.serverReflectionInfo(requests())) responses.push(res);
    const [numbers, unknownType, extension] = responses;
    assert.equal(numbers.messageResponse.case, "allExtensionNumbersResponse");
    assert.equal(numbers.messageResponse.value.baseTypeName, "remotegpu.v1.Host");
    assert.deepEqual(numbers.messageResponse.value.extensionNumber, []);
    assert.equal(unknownType.messageResponse.case, "errorResponse");
    assert.equal(unknownType.messageResponse.value.errorCode, 5);
    assert.equal(extension.messageResponse.case, "errorResponse");
    assert.equal(extension.messageResponse.value.errorCode, 5);
  });
});
