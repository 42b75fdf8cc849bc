// What the Node and the browser entry share: the generated types, the errors, the client's types
// and the helpers that need no Node API.

export * from "./generated.js";
export * from "./errors.js";
export type { RemoteGpuClient, HostServiceClient, GpuServiceClient, WorkspaceServiceClient, EnvironmentServiceClient } from "./client.js";
export type { CommonClientOptions, RetryBackoff, TokenSource } from "./options.js";
export { isIdempotent } from "./retry.js";
export { listAll, type ListAllOptions, type ListItem, type PageRequest, type PageResponse } from "./pagination.js";
export { waitForEnvironment, followLogs, type WaitForEnvironmentOptions, type FollowLogsOptions } from "./environments.js";
export { downloadFile, collectBytes, type DownloadFileOptions } from "./files.js";
// The few protobuf and Connect names callers meet, so that they need no second import.
export { Code, ConnectError, type CallOptions, type Interceptor } from "@connectrpc/connect";
export {
  timestampDate,
  timestampFromDate,
  timestampNow,
  durationFromMs,
  durationMs,
  type Timestamp,
  type Duration,
} from "@bufbuild/protobuf/wkt";
