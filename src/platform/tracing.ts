import {
  type Attributes,
  type Context,
  context,
  propagation,
  type Span,
  SpanKind,
  type SpanOptions,
  SpanStatusCode,
  trace,
} from "@opentelemetry/api";
import type { EventSubscriber, TransactionEventArgs } from "@mikro-orm/core";

// OpenTelemetry spans for RPCs, database transactions, reconciler passes and runtime calls, sent
// over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set. Unset, nothing is registered and every
// helper here returns at its first line: no span objects, no context switches.

let enabled = false;
const TRACER = "remotegpu";

/**
 * Starts exporting spans to `endpoint` (its /v1/traces); the standard OTEL_* variables of the
 * exporter (headers, timeout) apply. Returns what flushes and stops it.
 */
export async function startTracing(endpoint: string, serviceName: string): Promise<() => Promise<void>> {
  // Loaded only here: a server that exports no spans does not pay for the SDK at every start.
  const [
    { AsyncLocalStorageContextManager },
    { W3CTraceContextPropagator },
    { OTLPTraceExporter },
    { resourceFromAttributes },
    { BasicTracerProvider, BatchSpanProcessor },
  ] = await Promise.all([
    import("@opentelemetry/context-async-hooks"),
    import("@opentelemetry/core"),
    import("@opentelemetry/exporter-trace-otlp-http"),
    import("@opentelemetry/resources"),
    import("@opentelemetry/sdk-trace-base"),
  ]);
  const url = `${endpoint.replace(/\/+$/, "")}/v1/traces`;
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ "service.name": serviceName }),
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter({ url }), { scheduledDelayMillis: 1000 })],
  });
  trace.setGlobalTracerProvider(provider);
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  enabled = true;
  return async () => {
    enabled = false;
    await provider.shutdown().catch(() => undefined); // the collector may be gone: spans are best effort
    trace.disable();
    context.disable();
    propagation.disable();
  };
}

/** Runs `fn` in a span of its own (a child of the active one); the span ends with it and records a throw. */
export async function traced<T>(name: string, attributes: Attributes, fn: () => Promise<T>): Promise<T> {
  if (!enabled) return fn();
  return inSpan(name, { kind: SpanKind.INTERNAL, attributes }, context.active(), fn);
}

/**
 * An RPC's server span, continuing the caller's trace when it sent a `traceparent` header.
 * `outcome` names how a failed call ended (its code).
 */
export async function tracedCall<T>(
  name: string,
  attributes: Attributes,
  headers: Headers,
  fn: () => Promise<T>,
  outcome: (err: unknown) => string,
): Promise<T> {
  if (!enabled) return fn();
  const parent = propagation.extract(context.active(), headers, {
    get: (h, key) => h.get(key) ?? undefined,
    keys: (h) => [...h.keys()],
  });
  return inSpan(name, { kind: SpanKind.SERVER, attributes }, parent, fn, (span, err) =>
    span.setAttribute("rpc.connect_rpc.error_code", outcome(err)),
  );
}

async function inSpan<T>(
  name: string,
  options: SpanOptions,
  parent: Context,
  fn: () => Promise<T>,
  onError: (span: Span, err: unknown) => void = () => undefined,
): Promise<T> {
  return trace.getTracer(TRACER).startActiveSpan(name, options, parent, async (span) => {
    try {
      return await fn();
    } catch (err) {
      onError(span, err);
      span.recordException(err instanceof Error ? err : String(err));
      span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
      throw err;
    } finally {
      span.end();
    }
  });
}

/** The active span's ids, for log lines (empty when tracing is off or no span is active). */
export function traceFields(): { traceId?: string; spanId?: string } {
  if (!enabled) return {};
  const span = trace.getActiveSpan();
  if (!span) return {};
  const { traceId, spanId } = span.spanContext();
  return { traceId, spanId };
}

/** A span per database transaction, from begin to commit or rollback (MikroORM's transaction events). */
export class TransactionSpans implements EventSubscriber {
  private readonly open = new WeakMap<object, Span>();

  beforeTransactionStart(args: TransactionEventArgs): void {
    if (!enabled) return;
    this.open.set(
      args.em,
      trace.getTracer(TRACER).startSpan("db.transaction", { kind: SpanKind.CLIENT, attributes: { "db.system": "postgresql" } }),
    );
  }

  afterTransactionCommit(args: TransactionEventArgs): void {
    this.end(args, false);
  }

  afterTransactionRollback(args: TransactionEventArgs): void {
    this.end(args, true);
  }

  private end(args: TransactionEventArgs, rolledBack: boolean): void {
    const span = this.open.get(args.em);
    if (!span) return;
    this.open.delete(args.em);
    span.setAttribute("db.transaction.outcome", rolledBack ? "rollback" : "commit");
    span.end();
  }
}
