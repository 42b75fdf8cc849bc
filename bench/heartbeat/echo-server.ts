// The baseline: a bare connect-node server that answers the agent stream like RemoteGPU does
// (hello → welcome, heartbeat → ack) and does nothing else: no auth, no database, no telemetry.
import http2 from "node:http2";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { HostService, type StreamHeartbeatsRequest } from "../../gen/remotegpu/v1/host_pb.js";

const routes = (router: ConnectRouter) =>
  router.service(HostService, {
    async *streamHeartbeats(requests: AsyncIterable<StreamHeartbeatsRequest>) {
      for await (const req of requests) {
        if (req.message.case === "hello") yield { message: { case: "welcome", value: { sessionId: "echo" } } };
        else if (req.message.case === "heartbeat") yield { message: { case: "ack", value: { sequence: req.message.value.sequence } } };
      }
    },
  });

const server = http2.createServer(connectNodeAdapter({ routes }));
server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  const address = server.address();
  process.stdout.write(`${JSON.stringify({ msg: "remotegpu listening", port: typeof address === "object" ? address?.port : 0 })}\n`);
});
process.once("SIGTERM", () => process.exit(0));
