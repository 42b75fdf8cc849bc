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
/**
 * Messages hold int64 fields as `bigint`, which `JSON.stringify` refuses ("Do not know how to serialize
 * a BigInt"): write them with `toJsonString(EnvironmentSchema, environment)` (or `toJson` for an
 * object), which follows the protobuf JSON mapping as the server's Connect JSON does: int64 as
 * strings, enums by name, timestamps as RFC 3339. `fromJson`/`fromJsonString` read them back.
 */
export {
  fromJson,
  fromJsonString,
  toJson,
  toJsonString,
  type JsonValue,
  type JsonWriteOptions,
} from "@bufbuild/protobuf";
/**
 * The google.rpc error details the server sends (ErrorInfo, BadRequest, QuotaFailure, RetryInfo,
 * PreconditionFailure), for reading a `ConnectError`'s details with `err.findDetails(ErrorInfoSchema)`;
 * the SDK's named errors already carry what they say.
 */
export {
  BadRequestSchema,
  ErrorInfoSchema,
  PreconditionFailureSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
  type BadRequest,
  type ErrorInfo,
  type PreconditionFailure,
  type QuotaFailure,
  type RetryInfo,
} from "../../gen/google/rpc/error_details_pb.js";
export {
  timestampDate,
  timestampFromDate,
  timestampNow,
  durationFromMs,
  durationMs,
  type Timestamp,
  type Duration,
} from "@bufbuild/protobuf/wkt";
