import { strict as assert } from "node:assert";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  followLogs,
  LogLineSchema,
  LogStream,
  UnavailableError,
  type LogLine,
  type RemoteGpuClient,
  type StreamLogsRequest,
} from "../../sdk/src/index.js";

const line = (ms: number, text: string): LogLine => create(LogLineSchema, { time: timestampFromMs(ms), stream: LogStream.STDOUT, text });

/**
 * An environments client whose StreamLogs serves `answers` in turn: each a list of lines, then
 * either the end of the stream or a break (a server shutting down).
 */
function logsServer(answers: { lines: LogLine[]; breaks: boolean }[]) {
  const requests: Partial<StreamLogsRequest>[] = [];
  const client = {
    environments: {
      async *streamLogs(req: Partial<StreamLogsRequest>) {
        requests.push(req);
        const answer = answers.shift();
        if (!answer) throw new Error("no more answers");
        yield { lines: answer.lines };
        if (answer.breaks) throw new UnavailableError("the server is shutting down; call again");
      },
    },
  } as unknown as Pick<RemoteGpuClient, "environments">;
  return { client, requests };
}

describe("SDK: followLogs across a server restart", () => {
  it("with resume, follows on from the last line seen, giving no line twice", async () => {
    const { client, requests } = logsServer([
      { lines: [line(1000, "a"), line(2000, "b1"), line(2000, "b2")], breaks: true },
      // The second stream starts at the last time seen: b1 and b2 again, then what is new.
      { lines: [line(2000, "b1"), line(2000, "b2"), line(2000, "b3"), line(3000, "c")], breaks: false },
    ]);
    const seen: string[] = [];
    for await (const l of followLogs(client, "env-1", { resume: true })) seen.push(l.text);
    assert.deepEqual(seen, ["a", "b1", "b2", "b3", "c"]);
    assert.equal(requests.length, 2);
    assert.deepEqual(requests[1]!.sinceTime, timestampFromMs(2000));
  });

  it("gives every line, repeated ones and blank ones at the same time included; a resume skips by count", async () => {
    const { client } = logsServer([
      { lines: [line(1000, ""), line(1000, ""), line(1000, "same"), line(1000, "same")], breaks: true },
      { lines: [line(1000, ""), line(1000, ""), line(1000, "same"), line(1000, "same"), line(1000, "same")], breaks: false },
    ]);
    const seen: string[] = [];
    for await (const l of followLogs(client, "env-1", { resume: true })) seen.push(l.text);
    assert.deepEqual(seen, ["", "", "same", "same", "same"]);
  });

  it("without resume, ends with UnavailableError where the stream broke", async () => {
    const { client } = logsServer([{ lines: [line(1000, "a")], breaks: true }]);
    const seen: string[] = [];
    await assert.rejects(async () => {
      for await (const l of followLogs(client, "env-1")) seen.push(l.text);
    }, UnavailableError);
    assert.deepEqual(seen, ["a"]);
  });
});
