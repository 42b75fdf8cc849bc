import { randomUUID } from "node:crypto";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Authenticator } from "../auth/authenticator.js";
import type { Logger } from "../platform/logger.js";
import type { Metrics } from "../platform/metrics.js";
import type { AuditSubject, AuditTrail } from "../audit/audit-trail.js";
import { assertInWorkspace } from "../auth/workspace-access.js";
import { isId } from "../ids.js";
import { accessFor, authorize, isAudited } from "./access.js";
import { auditNoteKey, principalKey, requestIdKey } from "./context.js";
import { toConnectError } from "./error-mapping.js";

const CLIENT_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * The outermost interceptor: gives each call a request id, maps every error to its gRPC code, and
 * writes one log line and the metrics when the call (or stream) ends.
 */
export function observe(logger: Logger, metrics: Metrics): Interceptor {
  return (next) => async (req) => {
    const started = performance.now();
    const offered = req.header.get("x-request-id");
    const requestId = offered && CLIENT_REQUEST_ID.test(offered) ? offered : randomUUID();
    req.contextValues.set(requestIdKey, requestId);
    const service = req.service.typeName;
    const method = req.method.name;

    let finished = false;
    const finish = (err?: unknown): ConnectError | undefined => {
      finished = true;
      const mapped = err === undefined ? undefined : toConnectError(err);
      const code = mapped ? Code[mapped.error.code] : "OK";
      const seconds = (performance.now() - started) / 1000;
      metrics.rpcRequests.inc({ service, method, code });
      metrics.rpcDuration.observe({ service, method }, seconds);
      const principal = req.contextValues.get(principalKey);
      const line = {
        requestId,
        rpc: `${service}/${method}`,
        code,
        ms: Math.round(seconds * 10000) / 10,
        caller: principal ? `${principal.kind}:${principal.tokenId}` : undefined,
      };
      if (mapped && !mapped.expected) logger.error({ ...line, err }, "rpc failed unexpectedly");
      else logger.info(mapped ? { ...line, error: mapped.error.rawMessage } : line, "rpc");
      if (!mapped) return undefined;
      mapped.error.metadata.set("x-request-id", requestId);
      return mapped.error;
    };

    try {
      const res = await next(req);
      res.header.set("x-request-id", requestId);
      if (!res.stream) {
        finish();
        return res;
      }
      const source = res.message;
      async function* tracked() {
        try {
          yield* source;
          finish();
        } catch (err) {
          throw finish(err);
        } finally {
          if (!finished) finish(new ConnectError("stream cancelled", Code.Canceled));
        }
      }
      return { ...res, message: tracked() };
    } catch (err) {
      throw finish(err);
    }
  };
}

/** Establishes the caller from the bearer token (UNAUTHENTICATED without a valid one). */
export function authenticate(authenticator: Authenticator): Interceptor {
  return (next) => async (req) => {
    if (accessFor(req.service.typeName, req.method.name) !== "public") {
      req.contextValues.set(principalKey, await authenticator.authenticate(req.header.get("authorization")));
    }
    return next(req);
  };
}

/** Checks the method's access rule for the caller. Runs inside `audit`, so refusals are recorded too. */
export function authorizeCall(): Interceptor {
  return (next) => async (req) => {
    const principal = req.contextValues.get(principalKey);
    if (principal) {
      authorize(accessFor(req.service.typeName, req.method.name), principal, `${req.service.typeName}/${req.method.name}`);
      // Handlers check the workspace too; this catches a request naming another one before any handler runs.
      const check = (message: unknown) => {
        const named = (message as { workspaceId?: unknown }).workspaceId;
        if (typeof named === "string" && named !== "") assertInWorkspace(principal, named);
      };
      if (!req.stream) check(req.message);
      else if (req.method.methodKind === "server_streaming") {
        // The single request message of a server stream arrives as a stream of one: read it, check it, hand it on.
        const source = req.message[Symbol.asyncIterator]();
        const first = await source.next();
        if (!first.done) check(first.value);
        return next({ ...req, message: replay(first, source) });
      }
    }
    return next(req);
  };
}

async function* replay<T>(first: IteratorResult<T>, rest: AsyncIterator<T>): AsyncIterable<T> {
  if (first.done) return;
  yield first.value;
  for (let next = await rest.next(); !next.done; next = await rest.next()) yield next.value;
}

/** A best guess of the object a request names, for calls whose handler did not say (refused ones). */
function subjectOf(service: string, message: unknown): AuditSubject {
  const m = (message ?? {}) as Record<string, unknown>;
  const field = (name: string) => (typeof m[name] === "string" ? (m[name] as string) : "");
  const workspaceId = field("workspaceId") || (service === "remotegpu.v1.WorkspaceService" ? field("id") : "");
  const targetId = field("id") || field("tokenId") || field("environmentId") || field("hostId") || field("gpuId") || workspaceId;
  return {
    workspaceId: isId(workspaceId) ? workspaceId.toLowerCase() : null,
    // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what this strips
    targetId: targetId.replace(/[\x00-\x1f\x7f]/g, "").slice(0, 128),
  };
}

function codeName(err: unknown): string {
  return Code[toConnectError(err).error.code].replace(/(?<=[a-z])(?=[A-Z])/g, "_").toLowerCase();
}

/**
 * Records an audit event for every mutating call of an authenticated caller. A handler that changes
 * the database passes `auditNote(ctx)` to the domain, which adds the event inside its transaction;
 * any other outcome (a refusal, a failure, a change outside the database) is written here.
 */
export function audit(trail: AuditTrail, logger: Logger): Interceptor {
  return (next) => async (req) => {
    const principal = req.contextValues.get(principalKey);
    const service = req.service.typeName;
    if (!principal || !isAudited(service, req.method)) return next(req);

    const base = {
      actorId: principal.tokenId,
      actorKind: principal.kind,
      method: `${service}/${req.method.name}`,
      requestId: req.contextValues.get(requestIdKey),
    };
    let subject = req.stream ? { targetId: "" } : subjectOf(service, req.message);
    let noted = false;
    const record = (code: string) => ({
      ...base,
      // A workspace token's calls are its own workspace's record, even when they named another (and were refused).
      workspaceId: principal.kind === "workspace" ? principal.workspaceId : (subject.workspaceId ?? null),
      targetId: subject.targetId,
      code,
    });
    req.contextValues.set(auditNoteKey, (em, s) => {
      noted = true;
      subject = s;
      trail.add(em, record("ok"));
    });
    const write = (code: string) =>
      trail.append(record(code)).catch((err: unknown) => logger.error({ err, ...record(code) }, "writing an audit event failed"));
    try {
      const res = await next(req);
      if (!noted) await write("ok");
      return res;
    } catch (err) {
      await write(codeName(err));
      throw err;
    }
  };
}
