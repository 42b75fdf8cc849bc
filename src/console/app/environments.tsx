import {
  EnvironmentDesiredState,
  EnvironmentStatus,
  PortProtocol,
  timestampDate,
  WatchEventType,
  type Environment,
  type GetUsageResponse,
  type GpuModelAvailability,
  type PortMapping,
  type Workspace,
} from "@remotegpu/sdk/web";
import { useEffect, useRef, useState } from "preact/hooks";
import { canOperate, everything, listAll, type Session } from "./api.js";
import { ActionButton, bytes, Card, ConfirmButton, ErrorBanner, GiB, UsageBar, useStream } from "./ui.js";

const LOG_LINES_KEPT = 2000;

/** The workspace the page shows: the token's own, or for a cluster admin the one picked. */
function useWorkspace(session: Session): [string, (id: string) => void, Workspace[], unknown] {
  const admin = session.caller.clusterAdmin;
  const [picked, setPicked] = useState(admin ? "" : session.caller.workspaceId);
  const [workspaces, setWorkspaces] = useState<Workspace[]>([]);
  const [error, setError] = useState<unknown>(undefined);
  useEffect(() => {
    if (!admin) return;
    everything(listAll(session.client.workspaces.listWorkspaces, { pageSize: 500 }))
      .then((list) => {
        setWorkspaces(list);
        // The one picked earlier in this tab, if it still exists; else the first.
        const kept = sessionStorage.getItem("remotegpu.workspace");
        setPicked(list.find((w) => w.id === kept)?.id ?? list[0]?.id ?? "");
      })
      .catch(setError);
  }, []);
  const pick = (id: string) => {
    sessionStorage.setItem("remotegpu.workspace", id);
    setPicked(id);
  };
  return [picked, pick, workspaces, error];
}

/** A workspace's environments, live from WatchEnvironments, with its usage and a create form. */
export function Environments({ session }: { session: Session }) {
  const [workspaceId, pick, workspaces, workspacesError] = useWorkspace(session);
  const [environments, setEnvironments] = useState<Map<string, Environment>>(new Map());
  const [changes, setChanges] = useState(0);

  useEffect(() => setEnvironments(new Map()), [workspaceId]);
  const watchError = useStream(
    async (signal, ok) => {
      if (!workspaceId) return;
      // A new stream starts over: its INITIAL events are every environment (deleted ones go).
      let fresh = true;
      for await (const event of session.client.environments.watchEnvironments({ workspaceId }, { signal })) {
        ok();
        const env = event.environment!;
        const initial = event.type === WatchEventType.INITIAL;
        const restart: boolean = fresh && initial;
        fresh = false;
        setEnvironments((old) => {
          const next = restart ? new Map<string, Environment>() : new Map(old);
          if (event.type === WatchEventType.DELETED || env.status === EnvironmentStatus.DELETED) next.delete(env.id);
          else next.set(env.id, env);
          return next;
        });
        setChanges((n) => n + 1);
      }
    },
    [workspaceId],
  );

  const list = [...environments.values()].sort((a, b) => a.name.localeCompare(b.name));
  return (
    <>
      <ErrorBanner error={workspacesError} />
      {session.caller.clusterAdmin && (
        <label class="field inline">
          Workspace{" "}
          <select value={workspaceId} onChange={(e) => pick(e.currentTarget.value)}>
            {workspaces.map((w) => (
              <option key={w.id} value={w.id}>
                {w.displayName || w.name}
              </option>
            ))}
          </select>
        </label>
      )}
      {workspaceId && <Usage key={workspaceId} session={session} workspaceId={workspaceId} changes={changes} />}
      <Card title={`Environments (${list.length})`}>
        <ErrorBanner error={watchError} />
        {list.length === 0 ? (
          <p class="hint">No environments yet.</p>
        ) : (
          <div class="scroll">
            <table class="stack">
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Status</th>
                  <th scope="col">GPUs</th>
                  <th scope="col">Ports</th>
                  {canOperate(session.role) && <th scope="col">Actions</th>}
                </tr>
              </thead>
              <tbody>
                {list.map((env) => (
                  <tr key={env.id}>
                    <th scope="row">
                      <a href={`#/environments/${env.id}`}>{env.name}</a>
                    </th>
                    <td>
                      <Status env={env} />
                    </td>
                    <td>
                      {env.gpuCount} {env.gpuModel}
                    </td>
                    <td>
                      <Ports mappings={env.portMappings} />
                    </td>
                    {canOperate(session.role) && (
                      <td class="actions">
                        <Actions session={session} env={env} />
                      </td>
                    )}
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </Card>
      {canOperate(session.role) && workspaceId && <CreateForm key={workspaceId} session={session} workspaceId={workspaceId} />}
    </>
  );
}

function Status({ env }: { env: Environment }) {
  const name = EnvironmentStatus[env.status] ?? "UNKNOWN";
  return (
    <span class={`badge ${name.toLowerCase()}`} title={env.statusMessage} data-status={name}>
      {name}
    </span>
  );
}

/** Start, stop, restart and delete, as the environment's state allows. */
function Actions({ session, env }: { session: Session; env: Environment }) {
  const envs = session.client.environments;
  const wantsRunning = env.desiredState === EnvironmentDesiredState.RUNNING;
  return (
    <>
      {wantsRunning ? (
        <>
          <ActionButton label="Stop" action={() => envs.stopEnvironment({ id: env.id })} />
          <ActionButton label="Restart" action={() => envs.restartEnvironment({ id: env.id })} />
        </>
      ) : (
        <ActionButton label="Start" action={() => envs.startEnvironment({ id: env.id })} />
      )}
      <ConfirmButton
        label="Delete"
        danger
        question={`Delete ${env.name}? Its processes stop and its volume is removed; this cannot be undone.`}
        onConfirm={async () => {
          await envs.deleteEnvironment({ id: env.id });
          if (location.hash === `#/environments/${env.id}`) location.hash = "#/environments";
        }}
      />
    </>
  );
}

/** HTTP ports as links that open; TCP ports as the line to connect with (ssh for port 22). */
function Ports({ mappings }: { mappings: PortMapping[] }) {
  return (
    <ul class="ports">
      {mappings.map((p) => {
        // "host:port", "[v6]:port": the host alone, for the ssh line.
        const host = p.address.replace(/:\d+$/, "").replace(/^\[(.*)\]$/, "$1");
        let body;
        if (p.hostPort === 0) body = <span class="hint">not mapped (stopped)</span>;
        else if (p.protocol === PortProtocol.HTTP && p.url)
          body = (
            <a href={p.url} target="_blank" rel="noopener noreferrer">
              {p.url}
            </a>
          );
        else if (p.containerPort === 22 || p.name === "ssh") body = <code>{`ssh -p ${p.hostPort} ${host || "<host>"}`}</code>;
        else body = <code>{p.address}</code>;
        return (
          <li key={p.name}>
            {p.name} ({p.containerPort}): {body}
          </li>
        );
      })}
    </ul>
  );
}

function Usage({ session, workspaceId, changes }: { session: Session; workspaceId: string; changes: number }) {
  const [usage, setUsage] = useState<GetUsageResponse | undefined>(undefined);
  const [error, setError] = useState<unknown>(undefined);
  useEffect(() => {
    const abort = new AbortController();
    const timer = setTimeout(() => {
      session.client.workspaces
        .getUsage({ workspaceId }, { signal: abort.signal })
        .then((u) => {
          setUsage(u);
          setError(undefined);
        })
        .catch((err) => abort.signal.aborted || setError(err));
    }, 300);
    return () => {
      clearTimeout(timer);
      abort.abort();
    };
  }, [workspaceId, changes]);
  const u = usage?.usage;
  const q = usage?.quota;
  const n = (v: bigint | number | undefined) => (v === undefined ? undefined : Number(v));
  return (
    <Card title="Usage against quota">
      <ErrorBanner error={error} />
      {u && (
        <div class="usages">
          <UsageBar label="GPUs" used={u.gpus} limit={q?.maxGpus} />
          <UsageBar label="Environments" used={u.environments} limit={q?.maxEnvironments} />
          <UsageBar
            label="CPU"
            used={Number(u.cpuMillicores) / 1000}
            limit={q?.maxCpuMillicores === undefined ? undefined : Number(q.maxCpuMillicores) / 1000}
            unit=" cores"
          />
          <UsageBar
            label="Memory"
            used={Number(u.memoryBytes) / GiB}
            limit={q?.maxMemoryBytes === undefined ? undefined : n(q.maxMemoryBytes)! / GiB}
            unit=" GiB"
          />
          <UsageBar
            label="Storage"
            used={Number(u.storageBytes) / GiB}
            limit={q?.maxStorageBytes === undefined ? undefined : n(q.maxStorageBytes)! / GiB}
            unit=" GiB"
          />
        </div>
      )}
    </Card>
  );
}

/** "jupyter:8888/http, ssh:22" → port specs; TCP unless /http. */
function parsePorts(text: string): { name: string; containerPort: number; protocol: PortProtocol }[] {
  return text
    .split(/[\s,]+/)
    .filter(Boolean)
    .map((item) => {
      const m = /^([a-z0-9-]+):(\d+)(?:\/(tcp|http))?$/i.exec(item);
      if (!m) throw new Error(`ports: "${item}" is not name:port or name:port/http`);
      return { name: m[1]!, containerPort: Number(m[2]), protocol: m[3]?.toLowerCase() === "http" ? PortProtocol.HTTP : PortProtocol.TCP };
    });
}

function CreateForm({ session, workspaceId }: { session: Session; workspaceId: string }) {
  const [models, setModels] = useState<GpuModelAvailability[]>([]);
  const [model, setModel] = useState("");
  const [error, setError] = useState<unknown>(undefined);
  const [busy, setBusy] = useState(false);
  const form = useRef<HTMLFormElement>(null);
  useEffect(() => {
    const abort = new AbortController();
    session.client.environments
      .listGpuModels({ workspaceId }, { signal: abort.signal })
      .then((r) => {
        setModels(r.models);
        // A model that is no longer offered is not asked for unseen.
        if (!r.models.some((m) => m.model === model)) setModel("");
      })
      .catch((err) => abort.signal.aborted || setError(err));
    return () => abort.abort();
  }, [workspaceId, busy]);
  // A model's count is capped by what one host has free; "any model" is left to the server.
  const chosen = models.find((m) => m.model === model);
  const maxGpus = chosen?.maxPerHost;

  const submit = async (event: Event) => {
    event.preventDefault();
    const data = new FormData(form.current!);
    const text = (name: string) => String(data.get(name) ?? "").trim();
    setBusy(true);
    setError(undefined);
    try {
      const command = text("command");
      const { environment } = await session.client.environments.createEnvironment({
        workspaceId,
        name: text("name"),
        image: text("image"),
        command: command ? ["sh", "-c", command] : [],
        gpuCount: Number(text("gpus") || 0),
        gpuModel: model,
        ports: parsePorts(text("ports")),
        sshPublicKeys: text("ssh") ? [text("ssh")] : [],
        idleTimeoutMinutes: Number(text("idle") || 0),
        requestId: crypto.randomUUID(),
      });
      form.current!.reset();
      location.hash = `#/environments/${environment!.id}`;
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <Card title="New environment">
      <form ref={form} class="create" onSubmit={submit}>
        <label class="field">
          Name
          <input name="name" required maxLength={63} pattern="[a-z0-9]([a-z0-9-]*[a-z0-9])?" placeholder="my-notebook" />
        </label>
        <label class="field">
          Image
          <input name="image" required placeholder="pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime" />
        </label>
        <label class="field wide">
          Command (run with sh -c; empty: the image's own)
          <input name="command" placeholder="jupyter lab --ip=0.0.0.0 --port=8888" />
        </label>
        <label class="field">
          GPU model
          <select value={model} onChange={(e) => setModel(e.currentTarget.value)}>
            <option value="">Any model</option>
            {models.map((m) => (
              <option key={m.model} value={m.model}>
                {m.model} ({bytes(m.memoryBytes)}; {m.freeGpus} free, up to {m.maxPerHost} on one host)
              </option>
            ))}
          </select>
        </label>
        <label class="field">
          GPUs
          <input name="gpus" type="number" min={0} max={maxGpus} defaultValue={models.length > 0 ? "1" : "0"} required />
        </label>
        <label class="field">
          Ports (name:port, /http for a link)
          <input name="ports" placeholder="jupyter:8888/http ssh:22" />
        </label>
        <label class="field">
          Idle timeout (minutes, 0: never)
          <input name="idle" type="number" min={0} defaultValue="0" />
        </label>
        <label class="field wide">
          SSH public key
          <textarea name="ssh" rows={2} placeholder="ssh-ed25519 AAAA… you@laptop" />
        </label>
        <ErrorBanner error={error} />
        <div class="actions wide">
          <button type="submit" class="primary" disabled={busy}>
            Create
          </button>
          <span class="hint">{models.length === 0 ? "No GPU is free now; an environment without GPUs can still be created." : ""}</span>
        </div>
      </form>
    </Card>
  );
}

/** One environment: its state and history, ports, actions, and its log, followed live. */
export function EnvironmentDetail({ session, id }: { session: Session; id: string }) {
  const [env, setEnv] = useState<Environment | undefined>(undefined);
  const watchError = useStream(
    async (signal, ok) => {
      for await (const event of session.client.environments.watchEnvironments({ environmentId: id }, { signal })) {
        ok();
        setEnv(event.environment);
      }
    },
    [id],
  );
  if (!env) return <ErrorBanner error={watchError} />;
  return (
    <>
      <Card title={`Environment ${env.name}`} actions={canOperate(session.role) && <div class="actions"><Actions session={session} env={env} /></div>}>
        <ErrorBanner error={watchError} />
        <dl class="facts">
          <dt>Status</dt>
          <dd>
            <Status env={env} /> {env.statusMessage}
          </dd>
          <dt>Image</dt>
          <dd>
            <code>{env.image}</code>
          </dd>
          <dt>Command</dt>
          <dd>
            <code>{env.command.join(" ") || "(the image's)"}</code>
          </dd>
          <dt>GPUs</dt>
          <dd>
            {env.gpuCount} {env.gpuModel}
          </dd>
          <dt>Ports</dt>
          <dd>
            <Ports mappings={env.portMappings} />
          </dd>
          <dt>Volume</dt>
          <dd>
            {bytes(env.storageUsedBytes)} used of {bytes(env.storageBytes)}
          </dd>
        </dl>
        <details>
          <summary>History ({env.transitions.length})</summary>
          <ol class="history">
            {env.transitions.map((t, i) => (
              <li key={i}>
                {t.time ? timestampDate(t.time).toLocaleString() : ""} {EnvironmentStatus[t.status]} {t.message}
              </li>
            ))}
          </ol>
        </details>
      </Card>
      <Logs session={session} env={env} />
    </>
  );
}

/** The log, followed while the environment runs; pausing holds the view still, lines keep arriving. */
function Logs({ session, env }: { session: Session; env: Environment }) {
  const [lines, setLines] = useState<{ text: string[]; received: number }>({ text: [], received: 0 });
  const [paused, setPaused] = useState<{ text: string[]; received: number } | undefined>(undefined);
  const view = useRef<HTMLPreElement>(null);
  const running = env.status === EnvironmentStatus.RUNNING;

  const error = useStream(
    async (signal, ok) => {
      const all: string[] = [];
      let received = 0;
      for await (const r of session.client.environments.streamLogs({ environmentId: env.id, tailLines: 500, follow: true }, { signal })) {
        ok();
        all.push(...r.lines.map((l) => l.text));
        received += r.lines.length;
        if (all.length > LOG_LINES_KEPT) all.splice(0, all.length - LOG_LINES_KEPT);
        setLines({ text: [...all], received });
      }
    },
    [env.id, running],
  );
  const shown = paused ?? lines;
  useEffect(() => {
    if (!paused && view.current) view.current.scrollTop = view.current.scrollHeight;
  }, [lines, paused]);

  return (
    <Card
      title="Log"
      actions={
        <button type="button" aria-pressed={paused !== undefined} onClick={() => setPaused(paused ? undefined : lines)}>
          {paused ? `Resume (${lines.received - paused.received} new)` : "Pause"}
        </button>
      }
    >
      <ErrorBanner error={error} />
      <pre ref={view} class="log" tabIndex={0} aria-label="Log lines">
        {shown.text.join("\n") || "(no output yet)"}
      </pre>
    </Card>
  );
}
