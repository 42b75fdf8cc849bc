// grpc.health.v1.Health, the protocol load balancers, Kubernetes gRPC probes
// and grpc-health-probe speak.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus, HealthCheckResponseSchema } from "../../gen/health/v1/health_pb.js";

export type HealthState = "SERVING" | "NOT_SERVING";
export type HealthListener = (service: string, status: HealthState) => void;

/**
 * Serving status per service name; "" is the server as a whole and starts out
 * SERVING, the way grpc-go's health server does.
 */
export class HealthStatus {
  readonly #statuses = new Map<string, HealthState>([["", "SERVING"]]);
  readonly #listeners = new Set<HealthListener>();
  #shutdown = false;

  /** Ignored after shutdown(), so a late component can't advertise a dying server as healthy. */
  set(service: string, status: HealthState): void {
    if (this.#shutdown) return;
    this.#update(service, status);
  }

  get(service: string): HealthState | undefined {
    return this.#statuses.get(service);
  }

  /** A copy of every known service and its status. */
  all(): Map<string, HealthState> {
    return new Map(this.#statuses);
  }

  /** The listener hears actual changes only; call the returned function to stop. */
  subscribe(listener: HealthListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Marks every known service NOT_SERVING for good, so clients drain before the server stops. */
  shutdown(): void {
    this.#shutdown = true;
    for (const service of this.#statuses.keys()) this.#update(service, "NOT_SERVING");
  }

  #update(service: string, status: HealthState): void {
    if (this.#statuses.get(service) === status) return;
    this.#statuses.set(service, status);
    for (const listener of [...this.#listeners]) listener(service, status);
  }
}

const response = (status: ServingStatus) => create(HealthCheckResponseSchema, { status });
const toProto = (state: HealthState | undefined): ServingStatus =>
  state === undefined ? ServingStatus.SERVICE_UNKNOWN : ServingStatus[state];

export function registerHealth(router: ConnectRouter, health: HealthStatus): void {
  router.service(Health, {
    check(req) {
      const state = health.get(req.service);
      if (state === undefined) throw new ConnectError(`unknown service "${req.service}"`, Code.NotFound);
      return response(ServingStatus[state]);
    },

    list() {
      const statuses = Object.fromEntries([...health.all()].map(([name, state]) => [name, response(ServingStatus[state])]));
      return { statuses };
    },

    // Sends the current status, then every change, until the client goes away.
    // Listeners only wake the loop, which re-reads the status: bursts collapse
    // into the latest value and nothing is sent twice.
    async *watch(req, ctx) {
      let wake: (() => void) | undefined;
      const poke = () => wake?.();
      const unsubscribe = health.subscribe((service) => service === req.service && poke());
      ctx.signal.addEventListener("abort", poke);
      try {
        let sent = toProto(health.get(req.service));
        yield response(sent);
        while (!ctx.signal.aborted) {
          const now = toProto(health.get(req.service));
          if (now !== sent) {
            sent = now;
            yield response(sent);
            continue;
          }
          await new Promise<void>((resolve) => (wake = resolve));
          wake = undefined;
        }
      } finally {
        // Runs on abort and when connect returns the generator early.
        unsubscribe();
        ctx.signal.removeEventListener("abort", poke);
      }
    },
  });
}
