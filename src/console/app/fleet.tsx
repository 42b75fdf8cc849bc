import { GpuStatus, HostStatus, timestampDate, WatchEventType, type Gpu, type GpuSample, type Host } from "@remotegpu/sdk/web";
import { useEffect, useRef, useState } from "preact/hooks";
import { everything, listAll, type Session } from "./api.js";
import { ago, Card, ConfirmButton, ErrorBanner, useStream } from "./ui.js";

/** The fleet, for cluster admins: every host and every GPU, kept live by WatchHosts and WatchGpuTelemetry. */
export function Fleet({ session }: { session: Session }) {
  const { client } = session;
  const [hosts, setHosts] = useState<Map<string, Host>>(new Map());
  const [gpus, setGpus] = useState<Gpu[]>([]);
  const [samples, setSamples] = useState<Map<string, GpuSample>>(new Map());
  const [error, setError] = useState<unknown>(undefined);
  const [gpuEpoch, setGpuEpoch] = useState(0);

  // GPU rows (status, health, holder) change with hellos and heartbeats. They are read again every
  // 15 s, and at most every 5 s when a host's GPU counts or status change.
  useEffect(() => {
    const abort = new AbortController();
    everything(listAll(client.gpus.listGpus, { pageSize: 1000 }, { signal: abort.signal }))
      .then((list) => {
        setGpus(list);
        setError(undefined);
      })
      .catch((err) => abort.signal.aborted || setError(err));
    const timer = setTimeout(() => setGpuEpoch((n) => n + 1), 15_000);
    return () => {
      abort.abort();
      clearTimeout(timer);
    };
  }, [gpuEpoch]);
  const relist = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  useEffect(() => () => clearTimeout(relist.current), []);
  const soon = () => {
    relist.current ??= setTimeout(() => {
      relist.current = undefined;
      setGpuEpoch((n) => n + 1);
    }, 5000);
  };

  const hostsError = useStream(async (signal, ok) => {
    // A new stream starts over: its INITIAL events are the whole fleet (hosts deleted meanwhile go).
    let fresh = true;
    for await (const event of client.hosts.watchHosts({}, { signal })) {
      ok();
      const host = event.host!;
      const initial = event.type === WatchEventType.INITIAL;
      const restart = initial && fresh;
      setHosts((old) => {
        const next = restart ? new Map<string, Host>() : new Map(old);
        const before = old.get(host.id);
        if (event.type === WatchEventType.DELETED) next.delete(host.id);
        else next.set(host.id, host);
        const counts = (h?: Host) => (h ? `${h.status}/${h.gpuCount}/${h.availableGpuCount}` : "");
        if (!initial && counts(before) !== counts(event.type === WatchEventType.DELETED ? undefined : host)) soon();
        return next;
      });
      fresh = false;
    }
  }, []);

  // A large fleet sends thousands of samples a second: they are gathered and drawn once a second.
  const pending = useRef(new Map<string, GpuSample>());
  useEffect(() => {
    const timer = setInterval(() => {
      if (pending.current.size === 0) return;
      const arrived = pending.current;
      pending.current = new Map();
      setSamples((old) => new Map([...old, ...arrived]));
    }, 1000);
    return () => clearInterval(timer);
  }, []);
  const samplesError = useStream(async (signal, ok) => {
    for await (const { sample } of client.gpus.watchGpuTelemetry({}, { signal })) {
      ok();
      if (sample) pending.current.set(`${sample.hostId}/${sample.gpuUuid}`, sample);
    }
  }, []);

  const byHost = new Map<string, Gpu[]>();
  for (const g of gpus) byHost.set(g.hostId, [...(byHost.get(g.hostId) ?? []), g]);
  const sorted = [...hosts.values()].sort((a, b) => a.name.localeCompare(b.name));
  return (
    <>
      <ErrorBanner error={error ?? hostsError ?? samplesError} />
      <Card title={`Hosts (${sorted.length})`}>
        <div class="scroll">
          <table class="stack">
            <thead>
              <tr>
                <th scope="col">Host</th>
                <th scope="col">Status</th>
                <th scope="col">Agent</th>
                <th scope="col">Scheduling</th>
                <th scope="col">GPUs free / all</th>
                <th scope="col">Last heartbeat</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {sorted.map((h) => (
                <HostRow key={h.id} session={session} host={h} />
              ))}
            </tbody>
          </table>
        </div>
      </Card>
      <Card title={`GPUs (${gpus.length})`}>
        <p class="hint">Colour is utilisation, from idle (blue) to busy (red). Open a GPU for its history.</p>
        {sorted.map((h) => (
          <GpuGrid key={h.id} host={h} gpus={byHost.get(h.id) ?? []} samples={samples} />
        ))}
      </Card>
    </>
  );
}

function HostRow({ session, host }: { session: Session; host: Host }) {
  const { hosts } = session.client;
  const status = HostStatus[host.status] ?? "UNKNOWN";
  return (
    <tr>
      <th scope="row">
        <a href={`#/hosts/${host.id}`}>{host.name}</a>
      </th>
      <td>
        <span class={`badge ${status.toLowerCase()}`}>{status}</span>
        {host.statusMessage && <small> {host.statusMessage}</small>}
      </td>
      <td>{host.agentVersion || "–"}</td>
      <td>{host.schedulable ? "open" : "cordoned"}</td>
      <td>
        {host.availableGpuCount} / {host.gpuCount}
      </td>
      <td>{ago(host.lastHeartbeatTime && timestampDate(host.lastHeartbeatTime))}</td>
      <td class="actions">
        {host.schedulable ? (
          <ConfirmButton
            label="Cordon"
            question={`Cordon ${host.name}? No new environment will be placed on it; running ones stay.`}
            onConfirm={async () => void (await hosts.cordonHost({ id: host.id }))}
          />
        ) : (
          <ConfirmButton
            label="Uncordon"
            question={`Uncordon ${host.name}? New environments may be placed on it again.`}
            onConfirm={async () => void (await hosts.uncordonHost({ id: host.id }))}
          />
        )}
        <ConfirmButton
          label="Drain"
          danger
          question={`Drain ${host.name}? It is cordoned and every environment on it is stopped.`}
          onConfirm={async () => void (await hosts.drainHost({ id: host.id }))}
        />
      </td>
    </tr>
  );
}

/** One host's GPUs as tiles coloured by utilisation, with their health. */
function GpuGrid({ host, gpus, samples }: { host: Host; gpus: Gpu[]; samples: Map<string, GpuSample> }) {
  if (gpus.length === 0) return null;
  return (
    <div class="gpu-host">
      <h3>{host.name}</h3>
      <ul class="gpus">
        {gpus
          .sort((a, b) => a.index - b.index)
          .map((g) => {
            const sample = samples.get(`${host.id}/${g.uuid}`) ?? g.latestSample;
            const util = sample?.metrics?.gpuUtilizationPercent;
            const xid = sample?.metrics?.lastXid;
            const unhealthy = g.status === GpuStatus.UNHEALTHY;
            const health = [unhealthy ? g.healthReasons.join("; ") : "", xid ? `last XID ${xid}` : ""].filter(Boolean).join(", ");
            const label = `GPU ${g.index} of ${host.name}: ${GpuStatus[g.status]}${health ? ` (${health})` : ""}, utilisation ${util === undefined ? "unknown" : `${Math.round(util)}%`}`;
            return (
              <li key={g.id}>
                <a
                  href={`#/gpus/${g.id}`}
                  class={`gpu${unhealthy ? " unhealthy" : ""}`}
                  style={{ "--util": util ?? 0 }}
                  data-util={util === undefined ? "" : Math.round(util)}
                  aria-label={label}
                  title={`${g.model}\n${g.uuid}${g.holder ? `\nheld by ${g.holder}` : ""}`}
                >
                  <span class="index">#{g.index}</span>
                  <span class="util">{util === undefined ? "–" : `${Math.round(util)}%`}</span>
                  {unhealthy && <span class="health">UNHEALTHY {g.healthReasons.join("; ")}</span>}
                  {xid !== undefined && xid > 0 && <span class="health">XID {xid}</span>}
                  {g.holder && <span class="held">in use</span>}
                </a>
              </li>
            );
          })}
      </ul>
    </div>
  );
}
