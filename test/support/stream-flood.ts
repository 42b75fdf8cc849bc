// A hostile client, run as a process of its own so that its work does not slow the test's clients:
// one HTTP/2 connection that opens `count` WatchHosts streams at once and cancels each as soon as
// its first message arrives. Prints one JSON line with what became of them.
//
//   node --import tsx test/support/stream-flood.ts <baseUrl> <token> <count>
import http2 from "node:http2";
import { grpcHeaders } from "./grpc-envelope.js";

const [baseUrl, token, countArg] = process.argv.slice(2);
const count = Number(countArg);
const session = http2.connect(baseUrl!);
session.on("error", () => undefined);
// An empty WatchHostsRequest in a gRPC envelope: no flags, length 0.
const EMPTY = Buffer.alloc(5);
let answered = 0;
let refused = 0;
let other = 0;

// A well-behaved client: it learns the server's stream limit before it opens streams, and queues the rest.
await new Promise<void>((resolve) => session.once("remoteSettings", () => resolve()));
process.stdout.write(`${JSON.stringify({ connected: true })}\n`);
const started = performance.now();
await Promise.all(
  Array.from(
    { length: count },
    () =>
      new Promise<void>((resolve) => {
        const stream = session.request(grpcHeaders("/remotegpu.v1.HostService/WatchHosts", token));
        stream.on("error", () => undefined);
        stream.once("data", () => {
          answered++;
          stream.close(http2.constants.NGHTTP2_CANCEL);
        });
        stream.once("close", () => {
          if (stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM) refused++;
          else if (stream.rstCode !== http2.constants.NGHTTP2_CANCEL) other++;
          resolve();
        });
        stream.end(EMPTY);
      }),
  ),
);
process.stdout.write(`${JSON.stringify({ answered, refused, other, ms: Math.round(performance.now() - started) })}\n`);
session.close();
