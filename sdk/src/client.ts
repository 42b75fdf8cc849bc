import type { DescService } from "@bufbuild/protobuf";
import { createClient, type CallOptions, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { toRemoteGpuError } from "./errors.js";
import { EnvironmentService, GpuService, HostService, WorkspaceService } from "./generated.js";
import type { ResolvedOptions, TokenSource } from "./options.js";
import { retryInterceptor } from "./retry.js";

/** HostService: hosts, cordon/drain, agent heartbeats, WatchHosts. */
export type HostServiceClient = Client<typeof HostService>;
/** GpuService: GPUs, allocation, telemetry history and WatchGpuTelemetry. */
export type GpuServiceClient = Client<typeof GpuService>;
/** WorkspaceService: workspaces, quotas and usage, API tokens, files, audit events. */
export type WorkspaceServiceClient = Client<typeof WorkspaceService>;
/** EnvironmentService: environments, port mappings, StreamLogs, WatchEnvironments. */
export type EnvironmentServiceClient = Client<typeof EnvironmentService>;

/**
 * A RemoteGPU client: one typed sub-client per service, all sharing one connection, one token and
 * one retry and deadline policy. Every method takes the request as a plain object (or a message)
 * and `CallOptions` (`timeoutMs`, `signal`, `headers`, …); every failure is a `RemoteGpuError`
 * subclass.
 */
export interface RemoteGpuClient {
  /** HostService. */
  readonly hosts: HostServiceClient;
  /** GpuService. */
  readonly gpus: GpuServiceClient;
  /** WorkspaceService. */
  readonly workspaces: WorkspaceServiceClient;
  /** EnvironmentService. */
  readonly environments: EnvironmentServiceClient;
  /**
   * Closes the client's HTTP/2 connection, failing the calls still open on it with `CanceledError`.
   * A later call connects again. Not needed for the process to exit (an idle connection does not
   * keep it alive); a no-op where there is no connection to close (fetch-based transports).
   */
  close(): void;
}

/** The SDK's interceptors, outermost first: retries, then the authorization header, then the caller's own. */
export function clientInterceptors(options: ResolvedOptions, innermost: Interceptor[] = []): Interceptor[] {
  return [retryInterceptor(options), bearer(options.token), ...options.interceptors, ...innermost];
}

/** Builds the four sub-clients over one transport. */
export function buildClient(
  transport: Transport,
  options: Pick<ResolvedOptions, "timeoutMs">,
  close: () => void = () => undefined,
): RemoteGpuClient {
  return {
    hosts: serviceClient(HostService, transport, options.timeoutMs),
    gpus: serviceClient(GpuService, transport, options.timeoutMs),
    workspaces: serviceClient(WorkspaceService, transport, options.timeoutMs),
    environments: serviceClient(EnvironmentService, transport, options.timeoutMs),
    close,
  };
}

type AnyMethod = (input: unknown, options?: CallOptions) => unknown;

/**
 * A Connect client of `service` whose unary calls get the default deadline, and whose every failure
 * (of a promise or while iterating a stream) is mapped to the named error of its code.
 */
function serviceClient<S extends DescService>(service: S, transport: Transport, timeoutMs: number): Client<S> {
  const plain = createClient(service, transport) as unknown as Record<string, AnyMethod>;
  const wrapped: Record<string, AnyMethod> = {};
  for (const method of service.methods) {
    const call = plain[method.localName]!;
    switch (method.methodKind) {
      case "unary":
        wrapped[method.localName] = (input, options) => mapRejection(call(input, withDeadline(options, timeoutMs)) as Promise<unknown>);
        break;
      case "client_streaming":
        wrapped[method.localName] = (input, options) => mapRejection(call(input, options) as Promise<unknown>);
        break;
      default:
        wrapped[method.localName] = (input, options) => mapStreamErrors(call(input, options) as AsyncIterable<unknown>);
    }
  }
  return wrapped as unknown as Client<S>;
}

function withDeadline(options: CallOptions | undefined, timeoutMs: number): CallOptions | undefined {
  if (options?.timeoutMs !== undefined || timeoutMs <= 0) return options;
  return { ...options, timeoutMs };
}

async function mapRejection<T>(call: Promise<T>): Promise<T> {
  try {
    return await call;
  } catch (err) {
    throw toRemoteGpuError(err);
  }
}

async function* mapStreamErrors<T>(stream: AsyncIterable<T>): AsyncGenerator<T> {
  try {
    yield* stream;
  } catch (err) {
    throw toRemoteGpuError(err);
  }
}

function bearer(token: TokenSource): Interceptor {
  return (next) => async (req) => {
    req.header.set("authorization", `Bearer ${typeof token === "function" ? await token() : token}`);
    return next(req);
  };
}
