import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

/**
 * fetch rejects with a bare TypeError when it cannot reach the server (refused, reset, DNS,
 * offline). Said as UNAVAILABLE, it is retried like the same failure over Node's HTTP/2.
 */
export function fetchNetworkErrors(): Interceptor {
  return (next) => async (req) => {
    try {
      return await next(req);
    } catch (err) {
      if (err instanceof TypeError && !req.signal.aborted)
        throw new ConnectError(`network error: ${err.message}`, Code.Unavailable, undefined, undefined, err);
      throw err;
    }
  };
}
