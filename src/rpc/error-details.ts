// Typed error details on the wire: the google.rpc messages (ErrorInfo, BadRequest, QuotaFailure,
// PreconditionFailure, RetryInfo) that gRPC libraries of every language decode. connect-node sends
// them in the Connect error body, and for gRPC and gRPC-Web in `grpc-status-details-bin`.

import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";
import type { Code } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema, PreconditionFailureSchema, QuotaFailureSchema } from "../../gen/google/rpc/error_details_pb.js";
import { AlreadyExistsError, InvalidArgumentError, NotFoundError, QuotaExceededError, RequestIdReusedError } from "../errors.js";
import { SessionFencedError } from "../host/agent-sessions.js";
import { codeName } from "./code-name.js";

/** `ErrorInfo.domain` of every reason RemoteGPU defines. */
export const ERROR_DOMAIN = "remotegpu";

/** One detail of a ConnectError: a message type and its value. */
export interface Detail {
  desc: DescMessage;
  value: MessageInitShape<DescMessage>;
}

// A gRPC error's details travel in a trailer, and HTTP/2 caps the size of a header block: what a
// caller sent is quoted up to these bounds (the message has its own, in error-mapping.ts).
const MAX_VALUE = 256;
const MAX_DESCRIPTION = 512;
const MAX_VIOLATION_TEXT = 2000;

/** An ErrorInfo of RemoteGPU's domain. */
export function errorInfo(reason: string, metadata: Record<string, string> = {}): Detail {
  const bounded = Object.fromEntries(Object.entries(metadata).map(([k, v]) => [k, clip(v, MAX_VALUE)]));
  return { desc: ErrorInfoSchema, value: { reason, domain: ERROR_DOMAIN, metadata: bounded } };
}

/** The reason of an error that has none more precise than its code, e.g. "FAILED_PRECONDITION". */
export function codeReason(code: Code): string {
  return codeName(code).toUpperCase();
}

/**
 * The details of a domain error mapped to `code`: always an ErrorInfo (AIP-193), and the standard
 * message that carries the error's typed fields where there is one.
 */
export function detailsOf(err: unknown, code: Code): Detail[] {
  if (err instanceof InvalidArgumentError) return [errorInfo("INVALID_ARGUMENT"), badRequest(err)];
  if (err instanceof NotFoundError) return [errorInfo("NOT_FOUND", { kind: err.kind, id: err.id })];
  if (err instanceof AlreadyExistsError) return [errorInfo("ALREADY_EXISTS", { kind: err.kind })];
  if (err instanceof QuotaExceededError) return quotaExceeded(err);
  if (err instanceof RequestIdReusedError) {
    return [
      errorInfo("REQUEST_ID_REUSED", { request_id: err.requestId, existing_id: err.existingId }),
      {
        desc: PreconditionFailureSchema,
        value: { violations: [{ type: "REQUEST_ID", subject: clip(err.requestId, MAX_VALUE), description: err.message }] },
      },
    ];
  }
  if (err instanceof SessionFencedError) return [errorInfo("SESSION_FENCED", { newer_session_id: err.newerSessionId })];
  return [errorInfo(codeReason(code))];
}

function badRequest(err: InvalidArgumentError): Detail {
  const fieldViolations: { field: string; description: string }[] = [];
  let budget = MAX_VIOLATION_TEXT;
  for (const v of err.violations) {
    const field = clip(v.field, MAX_VALUE);
    const description = clip(v.description, MAX_DESCRIPTION);
    budget -= field.length + description.length;
    // The first violation always goes: a caller should never get a BadRequest without any.
    if (budget < 0 && fieldViolations.length > 0) break;
    fieldViolations.push({ field, description });
  }
  return { desc: BadRequestSchema, value: { fieldViolations } };
}

/**
 * QUOTA_EXCEEDED: ErrorInfo metadata `dimension`, `limit`, `in_use`, `requested` (numbers in the
 * quota's own unit: GPUs, environments, millicores, bytes), the same as a QuotaFailure violation.
 * `allowed_gpu_models` refuses a model rather than a count, so it has no numbers.
 */
function quotaExceeded(err: QuotaExceededError): Detail[] {
  const counted = err.dimension !== "allowed_gpu_models";
  const metadata: Record<string, string> = { dimension: err.dimension };
  if (counted) Object.assign(metadata, { limit: String(err.limit), in_use: String(err.inUse), requested: String(err.requested) });
  const model = /^max_gpus_per_model\["(.*)"\]$/.exec(err.dimension)?.[1];
  return [
    errorInfo("QUOTA_EXCEEDED", metadata),
    {
      desc: QuotaFailureSchema,
      value: {
        violations: [
          {
            subject: "workspace",
            description: clip(err.message, MAX_DESCRIPTION),
            apiService: "remotegpu.v1.WorkspaceService",
            quotaMetric: model === undefined ? err.dimension : "max_gpus_per_model",
            quotaId: clip(err.dimension, MAX_VALUE),
            quotaDimensions: model === undefined ? {} : { gpu_model: clip(model, MAX_VALUE) },
            quotaValue: counted && Number.isSafeInteger(err.limit) ? BigInt(err.limit) : 0n,
          },
        ],
      },
    },
  ];
}

function clip(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}
