import { strict as assert } from "node:assert";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import { EnvironmentService } from "../../gen/remotegpu/v1/environment_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { createLogger } from "../../src/platform/logger.js";
import { FakeAgent } from "../support/fake-agent.js";
import { startTestServer, type TestServer } from "../support/server.js";

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  attributes?: { key: string; value: { stringValue?: string } }[];
}

/** An OTLP/HTTP collector that keeps every span it is sent (JSON encoding, as the exporter sends). */
async function collector(): Promise<{ server: Server; url: string; spans: OtlpSpan[]; paths: string[] }> {
  const spans: OtlpSpan[] = [];
  const paths: string[] = [];
  const server = createServer((req, res) => {
    let body = "";
    req.setEncoding("utf8").on("data", (c: string) => (body += c));
    req.on("end", () => {
      paths.push(req.url ?? "");
      const parsed = JSON.parse(body) as { resourceSpans: { scopeSpans: { spans: OtlpSpan[] }[] }[] };
      for (const r of parsed.resourceSpans) for (const s of r.scopeSpans) spans.push(...s.spans);
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, spans, paths };
}

describe("integration: OpenTelemetry traces over OTLP", function () {
  this.timeout(30_000);
  let otlp: Awaited<ReturnType<typeof collector>>;
  let server: TestServer | undefined;
  const logLines: Record<string, unknown>[] = [];

  before(async () => {
    otlp = await collector();
  });
  after(async () => {
    await server?.close();
    otlp.server.close();
  });

  it("exports spans for RPCs (continuing the caller's trace), transactions, reconciler passes and runtime calls; log lines carry the trace id", async () => {
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const line of chunk.toString().split("\n")) if (line) logLines.push(JSON.parse(line));
        done();
      },
    });
    server = await startTestServer({
      env: { OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url, OTEL_SERVICE_NAME: "cp-test" },
      logger: createLogger("info", sink),
    });
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    const callerSpan = "00f067aa0ba902b7";
    const hosts = server.client(HostService);
    const created = await hosts.createHost(
      { name: "traced-host", address: "10.3.0.1" },
      { headers: { traceparent: `00-${traceId}-${callerSpan}-01` } },
    );
    const agent = new FakeAgent(server, created.agentToken);
    await agent.hello(created.host!.id, [{ index: 0, uuid: "GPU-t-0" }]);
    await agent.beat([{ uuid: "GPU-t-0", index: 0, util: 1 }]); // heartbeats are not traced
    const ws = (await server.client(WorkspaceService).createWorkspace({ name: "traced-team" })).workspace!.id;
    const env = (await server.client(EnvironmentService).createEnvironment({ workspaceId: ws, name: "traced", image: "x", gpuCount: 1 }))
      .environment!;
    await server.app.maintain();
    agent.close();
    await server.close(); // flushes the batch of spans
    server = undefined;

    assert.ok(
      otlp.paths.every((p) => p === "/v1/traces"),
      otlp.paths.join(),
    );
    const named = (name: string) => otlp.spans.filter((s) => s.name === name);
    const call = named("remotegpu.v1.HostService/CreateHost")[0];
    assert.ok(call, `spans: ${otlp.spans.map((s) => s.name).join(", ")}`);
    assert.equal(call.traceId, traceId, "the caller's trace goes on");
    assert.equal(call.parentSpanId, callerSpan);
    assert.ok(
      otlp.spans.some((s) => s.name === "db.transaction" && s.traceId === traceId && s.parentSpanId === call.spanId),
      "CreateHost's transaction is a child of its span",
    );
    assert.ok(named("reconciler.pass").length >= 1);
    const run = named("runtime.run").find((s) =>
      s.attributes?.some((a) => a.key === "remotegpu.environment_id" && a.value.stringValue === env.id),
    );
    assert.ok(run, "the agent was asked to run the environment, in a span");
    assert.equal(named("remotegpu.v1.HostService/StreamHeartbeats").length, 0, "the heartbeat stream is not traced");

    const line = logLines.find((l) => l.msg === "rpc" && l.rpc === "remotegpu.v1.HostService/CreateHost");
    assert.equal(line?.traceId, traceId, "the call's log line names its trace");
  });

  it("without OTEL_EXPORTER_OTLP_ENDPOINT nothing is exported and log lines carry no trace id", async () => {
    const before = otlp.spans.length;
    logLines.length = 0;
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const line of chunk.toString().split("\n")) if (line) logLines.push(JSON.parse(line));
        done();
      },
    });
    server = await startTestServer({ logger: createLogger("info", sink) });
    await server.client(HostService).listHosts({}, { headers: { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" } });
    await server.close();
    server = undefined;
    assert.equal(otlp.spans.length, before);
    assert.ok(logLines.some((l) => l.msg === "rpc"));
    assert.ok(logLines.every((l) => l.traceId === undefined));
  });
});
