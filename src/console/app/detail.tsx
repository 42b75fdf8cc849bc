import {
  durationFromMs,
  GpuStatus,
  HostStatus,
  timestampDate,
  timestampFromDate,
  type Gpu,
  type GpuMetrics,
  type Host,
} from "@remotegpu/sdk/web";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { everything, listAll, type Session } from "./api.js";
import { Chart, type Columns } from "./chart.js";
import { ago, bytes, Card, ErrorBanner, GiB, useStream } from "./ui.js";

/** The history windows offered, with a bucket width that gives a few hundred points each. */
const WINDOWS = {
  hour: { ms: 3_600_000, stepMs: 10_000 },
  day: { ms: 86_400_000, stepMs: 300_000 },
  week: { ms: 7 * 86_400_000, stepMs: 1_800_000 },
} as const;
type Window = keyof typeof WINDOWS;

const METRICS: { title: string; unit: string; max?: number; read: (m: GpuMetrics) => number | undefined }[] = [
  { title: "Utilisation", unit: "%", max: 100, read: (m) => m.gpuUtilizationPercent },
  { title: "Memory used", unit: "GiB", read: (m) => (m.memoryUsedBytes === undefined ? undefined : Number(m.memoryUsedBytes) / GiB) },
  { title: "Temperature", unit: "°C", read: (m) => m.temperatureCelsius },
  { title: "Power", unit: "W", read: (m) => m.powerDrawWatts },
];

interface Point {
  /** Seconds since the epoch. */
  t: number;
  m: GpuMetrics;
}

/** Four plots of the GPUs' history (GetGpuTelemetry averages), extended live by WatchGpuTelemetry. */
function TelemetryCharts({ session, gpus, scope }: { session: Session; gpus: Gpu[]; scope: { gpuId: string } | { hostId: string } }) {
  const { client } = session;
  const [window, setWindow] = useState<Window>("hour");
  const [points, setPoints] = useState<Map<string, Point[]>>(new Map());
  const [error, setError] = useState<unknown>(undefined);
  const ids = gpus.map((g) => g.id).join(",");

  useEffect(() => {
    const abort = new AbortController();
    const { ms, stepMs } = WINDOWS[window];
    const startTime = timestampFromDate(new Date(Date.now() - ms));
    Promise.all(
      gpus.map(async (g) => {
        const { buckets } = await client.gpus.getGpuTelemetry({ gpuId: g.id, startTime, step: durationFromMs(stepMs) }, { signal: abort.signal });
        return [g.id, buckets.map((b) => ({ t: timestampDate(b.startTime!).getTime() / 1000, m: b.average! }))] as const;
      }),
    )
      .then((history) => {
        // Live points that came in before the history did are kept after it.
        setPoints((old) => new Map(history.map(([id, list]) => [id, [...list, ...(old.get(id) ?? []).filter((p) => p.t > (list.at(-1)?.t ?? 0))]])));
        setError(undefined);
      })
      .catch((err) => abort.signal.aborted || setError(err));
    return () => abort.abort();
  }, [ids, window]);

  // Live samples are gathered and drawn once a second; points older than the window are let go.
  const pending = useRef<{ id: string; point: Point }[]>([]);
  useEffect(() => {
    const timer = setInterval(() => {
      if (pending.current.length === 0) return;
      const arrived = pending.current;
      pending.current = [];
      const since = Date.now() / 1000 - WINDOWS[window].ms / 1000;
      setPoints((old) => {
        const next = new Map(old);
        for (const { id, point } of arrived) {
          const list = next.get(id) ?? [];
          if (list.length === 0 || list[list.length - 1]!.t < point.t) next.set(id, [...list, point]);
        }
        for (const [id, list] of next) if ((list[0]?.t ?? since) < since) next.set(id, list.filter((p) => p.t >= since));
        return next;
      });
    }, 1000);
    return () => clearInterval(timer);
  }, [window]);
  const streamError = useStream(
    async (signal, ok) => {
      const byUuid = new Map(gpus.map((g) => [g.uuid, g.id]));
      for await (const { sample } of client.gpus.watchGpuTelemetry(scope, { signal })) {
        ok();
        const id = sample?.gpuId || byUuid.get(sample?.gpuUuid ?? "");
        if (!sample?.metrics || !id || !sample.sampleTime) continue;
        pending.current.push({ id, point: { t: timestampDate(sample.sampleTime).getTime() / 1000, m: sample.metrics } });
      }
    },
    [ids],
  );

  const charts = useMemo(() => {
    const times = [...new Set([...points.values()].flatMap((list) => list.map((p) => p.t)))].sort((a, b) => a - b);
    const at = new Map(times.map((t, i) => [t, i]));
    return METRICS.map((metric) => {
      const columns: Columns = [times];
      for (const g of gpus) {
        const values: (number | null)[] = new Array(times.length).fill(null);
        for (const p of points.get(g.id) ?? []) values[at.get(p.t)!] = metric.read(p.m) ?? null;
        columns.push(values);
      }
      return { metric, columns };
    });
  }, [points, ids]);

  return (
    <Card
      title="Telemetry"
      actions={
        <div role="group" aria-label="Time window" class="segmented">
          {(Object.keys(WINDOWS) as Window[]).map((w) => (
            <button key={w} type="button" aria-pressed={w === window} onClick={() => setWindow(w)}>
              Last {w}
            </button>
          ))}
        </div>
      }
    >
      <ErrorBanner error={error ?? streamError} />
      <div class="charts">
        {charts.map(({ metric, columns }) => (
          <Chart
            key={metric.title}
            title={metric.title}
            unit={metric.unit}
            max={metric.max}
            spanSeconds={WINDOWS[window].ms / 1000}
            labels={gpus.map((g) => `GPU ${g.index}`)}
            data={columns}
          />
        ))}
      </div>
    </Card>
  );
}

export function GpuDetail({ session, id }: { session: Session; id: string }) {
  const [gpu, setGpu] = useState<Gpu | undefined>(undefined);
  const [error, setError] = useState<unknown>(undefined);
  useEffect(() => {
    session.client.gpus
      .getGpu({ id })
      .then((r) => setGpu(r.gpu))
      .catch(setError);
  }, [id]);
  if (!gpu) return <ErrorBanner error={error} />;
  return (
    <>
      <Card title={`GPU ${gpu.index} of ${gpu.hostName}`}>
        <dl class="facts">
          <dt>Model</dt>
          <dd>{gpu.model}</dd>
          <dt>UUID</dt>
          <dd>
            <code>{gpu.uuid}</code>
          </dd>
          <dt>Host</dt>
          <dd>
            <a href={`#/hosts/${gpu.hostId}`}>{gpu.hostName}</a>
          </dd>
          <dt>Status</dt>
          <dd>
            {GpuStatus[gpu.status]} {gpu.healthReasons.length > 0 && <span class="health">{gpu.healthReasons.join("; ")}</span>}
          </dd>
          <dt>Memory</dt>
          <dd>{bytes(gpu.memoryBytes)}</dd>
          <dt>Held by</dt>
          <dd>{gpu.holder || "nobody"}</dd>
          <dt>Driver / CUDA</dt>
          <dd>
            {gpu.driverVersion || "–"} / {gpu.cudaVersion || "–"}
          </dd>
        </dl>
      </Card>
      <TelemetryCharts session={session} gpus={[gpu]} scope={{ gpuId: gpu.id }} />
    </>
  );
}

export function HostDetail({ session, id }: { session: Session; id: string }) {
  const [host, setHost] = useState<Host | undefined>(undefined);
  const [gpus, setGpus] = useState<Gpu[]>([]);
  const [error, setError] = useState<unknown>(undefined);
  useEffect(() => {
    Promise.all([session.client.hosts.getHost({ id }), everything(listAll(session.client.gpus.listGpus, { hostId: id, pageSize: 1000 }))])
      .then(([r, list]) => {
        setHost(r.host);
        setGpus(list.sort((a, b) => a.index - b.index));
      })
      .catch(setError);
  }, [id]);
  if (!host) return <ErrorBanner error={error} />;
  return (
    <>
      <Card title={`Host ${host.name}`}>
        <dl class="facts">
          <dt>Status</dt>
          <dd>
            {HostStatus[host.status]} {host.statusMessage}
          </dd>
          <dt>Address</dt>
          <dd>{host.address}</dd>
          <dt>Agent</dt>
          <dd>{host.agentVersion || "–"}</dd>
          <dt>Scheduling</dt>
          <dd>{host.schedulable ? "open" : "cordoned"}</dd>
          <dt>GPUs</dt>
          <dd>
            {host.availableGpuCount} free of {host.gpuCount}:{" "}
            {gpus.map((g) => (
              <a key={g.id} href={`#/gpus/${g.id}`} class="chip">
                GPU {g.index}
              </a>
            ))}
          </dd>
          <dt>CPU / memory</dt>
          <dd>
            {Number(host.capacity?.cpuMillicores ?? 0n) / 1000} cores / {bytes(host.capacity?.memoryBytes)}
          </dd>
          <dt>Last heartbeat</dt>
          <dd>{ago(host.lastHeartbeatTime && timestampDate(host.lastHeartbeatTime))}</dd>
        </dl>
      </Card>
      {gpus.length > 0 && <TelemetryCharts session={session} gpus={gpus} scope={{ hostId: host.id }} />}
    </>
  );
}
