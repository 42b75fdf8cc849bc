import { randomUUID } from "node:crypto";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Authenticator } from "../auth/authenticator.js";
import type { Logger } from "../platform/logger.js";
import type { Metrics } from "../platform/metrics.js";
import { accessFor, authorize } from "./access.js";
import { principalKey, requestIdKey } from "./context.js";
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

/** Establishes the caller from the bearer token and checks the method's access rule. */
export function authenticate(authenticator: Authenticator): Interceptor {
  return (next) => async (req) => {
    const access = accessFor(req.service.typeName, req.method.name);
    if (access !== "public") {
      const principal = await authenticator.authenticate(req.header.get("authorization"));
      req.contextValues.set(principalKey, principal);
      authorize(access, principal, `${req.service.typeName}/${req.method.name}`);
    }
    return next(req);
  };
}
