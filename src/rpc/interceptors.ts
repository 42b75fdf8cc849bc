import { randomUUID } from "node:crypto";
import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";
import type { Authenticator } from "../auth/authenticator.js";
import type { Logger } from "../platform/logger.js";
import type { Metrics } from "../platform/metrics.js";
import { onSharedAbort } from "../platform/shared-abort.js";
import { tracedCall } from "../platform/tracing.js";
import type { AuditSubject, AuditTrail } from "../audit/audit-trail.js";
import { assertInWorkspace } from "../auth/workspace-access.js";
import { isId } from "../ids.js";
import { accessFor, authorize, isAudited } from "./access.js";
import { auditNoteKey, principalKey, requestIdKey } from "./context.js";
import { codeName as nameOfCode } from "./code-name.js";
import { toConnectError } from "./error-mapping.js";

const CLIENT_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** Aborted when the server stops (RpcServer sets it on every call): open streams then end with its reason, UNAVAILABLE. */
export const serverShutdownKey = createContextKey<AbortSignal | undefined>(undefined, { description: "server shutdown" });

/**
 * A span per unary call when tracing is on (streams, the agents' heartbeat stream among them, are
 * not traced), continuing the caller's trace from its `traceparent` header. Outermost, so that the
 * call's log line carries its trace id.
 */
export function traceCalls(): Interceptor {
  return (next) => (call) => {
    if (call.stream) return next(call);
    const attributes = { "rpc.system": "connect_rpc", "rpc.service": call.service.typeName, "rpc.method": call.method.name };
    return tracedCall(
      `${call.service.typeName}/${call.method.name}`,
      attributes,
      call.header,
      () => next(call),
      (err) => nameOfCode(ConnectError.from(err).code),
    );
  };
}

/**
 * The outermost interceptor but for tracing: gives each call a request id, maps every error to its gRPC code, and
 * writes one log line and the metrics when the call (or stream) ends. A stream still open when the
 * server stops ends at once with UNAVAILABLE, which tells its caller to connect again.
 */
export function observe(logger: Logger, metrics: Metrics): Interceptor {
  return (next) => async (call) => {
    const started = performance.now();
    const offered = call.header.get("x-request-id");
    const requestId = offered && CLIENT_REQUEST_ID.test(offered) ? offered : randomUUID();
    call.contextValues.set(requestIdKey, requestId);
    const service = call.service.typeName;
    const method = call.method.name;

    let finished = false;
    const finish = (err?: unknown): ConnectError | undefined => {
      finished = true;
      // A caller that went away is no failure of ours, whatever the broken read or write says.
      const gone = err !== undefined && !isExpectedError(err) && (call.signal.aborted || isPeerGone(err));
      const mapped = err === undefined ? undefined : gone ? { error: whyEnded(call.signal), expected: true } : toConnectError(err);
      const code = mapped ? nameOfCode(mapped.error.code) : "ok";
      const seconds = (performance.now() - started) / 1000;
      metrics.rpcRequests.inc({ service, method, code });
      metrics.rpcDuration.observe({ service, method }, seconds);
      const principal = call.contextValues.get(principalKey);
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
      let req = call;
      if (req.stream && req.method.methodKind === "server_streaming") {
        // The one message of a server stream is decoded before anything else, as a unary call's is,
        // so an undecodable one is INVALID_ARGUMENT whoever sends it.
        const source = req.message[Symbol.asyncIterator]();
        req = { ...req, message: replay(await source.next(), source) };
      }
      const res = await next(req);
      res.header.set("x-request-id", requestId);
      if (!res.stream) {
        finish();
        return res;
      }
      const source = res.message;
      const shutdown = call.contextValues.get(serverShutdownKey);
      async function* tracked() {
        try {
          yield* untilAborted(source, shutdown);
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

/** The items of `source` until `signal` aborts; then it throws the signal's reason (and ends `source`). */
async function* untilAborted<T>(source: AsyncIterable<T>, signal: AbortSignal | undefined): AsyncGenerator<T> {
  if (!signal) return yield* source;
  const it = source[Symbol.asyncIterator]();
  // Each wait is cut short through its own promise: racing every message against one promise that
  // lives as long as the stream would leave a reaction on it per message, holding the message (a
  // 1 MiB download chunk, an agent's ack) until the stream ends.
  let cut: ((reason: unknown) => void) | undefined;
  const stopWatching = onSharedAbort(signal, () => cut?.(signal.reason));
  try {
    for (;;) {
      if (signal.aborted) throw signal.reason;
      const next = await new Promise<IteratorResult<T>>((resolve, reject) => {
        cut = reject;
        it.next().then(resolve, reject);
      });
      cut = undefined;
      if (next.done) return;
      yield next.value;
    }
  } catch (err) {
    // The handler is left waiting; connect-es aborts its context when the stream ends with this error.
    if (signal.aborted) it.return?.().catch(() => undefined);
    throw err;
  } finally {
    stopWatching();
  }
}

/** Why a call whose signal aborted ended: its deadline, the server stopping, or else its caller leaving. */
function whyEnded(signal: AbortSignal): ConnectError {
  const reason: unknown = signal.aborted ? signal.reason : undefined;
  return reason instanceof ConnectError && isExpectedError(reason) ? reason : new ConnectError("the caller went away", Code.Canceled);
}

function isExpectedError(err: unknown): boolean {
  return err instanceof ConnectError ? err.code !== Code.Internal && err.code !== Code.Unknown : toConnectError(err).expected;
}

const PEER_GONE = new Set(["ERR_STREAM_PREMATURE_CLOSE", "ERR_HTTP2_INVALID_STREAM", "ERR_HTTP2_STREAM_ERROR", "ECONNRESET", "EPIPE"]);

/** Whether `err` says that the other end went away: a reset stream, a closed connection, "Premature close". */
export function isPeerGone(err: unknown): boolean {
  if (err instanceof ConnectError && (err.code === Code.Canceled || err.code === Code.Aborted)) return true;
  const cause = (err instanceof ConnectError ? (err.cause ?? err) : err) as { code?: unknown } | undefined;
  return typeof cause?.code === "string" && PEER_GONE.has(cause.code);
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
  return nameOfCode(toConnectError(err).error.code);
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
      // A bidi stream (OpenSshTunnel) has only started here: its handler records how it ends.
      if (!noted && req.method.methodKind !== "bidi_streaming") await write("ok");
      return res;
    } catch (err) {
      await write(codeName(err));
      throw err;
    }
  };
}
