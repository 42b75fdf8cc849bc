import { timestampDate, timestampFromDate, type AuditEvent, type ListAuditEventsRequest } from "@remotegpu/sdk/web";
import { useEffect, useRef, useState } from "preact/hooks";
import type { Session } from "./api.js";
import { Card, ErrorBanner } from "./ui.js";

type Filter = Pick<ListAuditEventsRequest, "workspaceId" | "actorId" | "targetId" | "startTime" | "endTime">;

/** The audit trail, newest first, filtered by who, what and when, one page at a time. */
export function Audit({ session }: { session: Session }) {
  const [filter, setFilter] = useState<Filter>({ workspaceId: session.caller.workspaceId, actorId: "", targetId: "" });
  const [events, setEvents] = useState<AuditEvent[]>([]);
  const [next, setNext] = useState("");
  const [error, setError] = useState<unknown>(undefined);
  const form = useRef<HTMLFormElement>(null);

  const load = async (pageToken: string, keep: AuditEvent[]) => {
    setError(undefined);
    try {
      const page = await session.client.workspaces.listAuditEvents({ ...filter, pageSize: 100, pageToken });
      setEvents([...keep, ...page.events]);
      setNext(page.nextPageToken);
    } catch (err) {
      setError(err);
    }
  };
  useEffect(() => void load("", []), [filter]);

  const apply = (event: Event) => {
    event.preventDefault();
    const data = new FormData(form.current!);
    const text = (name: string) => String(data.get(name) ?? "").trim();
    const time = (name: string) => (text(name) ? timestampFromDate(new Date(text(name))) : undefined);
    setFilter({
      workspaceId: session.caller.clusterAdmin ? text("workspace") : session.caller.workspaceId,
      actorId: text("actor"),
      targetId: text("target"),
      startTime: time("from"),
      endTime: time("to"),
    });
  };

  return (
    <Card title="Audit trail">
      <form ref={form} class="filters" onSubmit={apply}>
        {session.caller.clusterAdmin && (
          <label class="field">
            Workspace id
            <input name="workspace" placeholder="all" />
          </label>
        )}
        <label class="field">
          Actor (token id)
          <input name="actor" />
        </label>
        <label class="field">
          Target id
          <input name="target" />
        </label>
        <label class="field">
          From
          <input name="from" type="datetime-local" />
        </label>
        <label class="field">
          To
          <input name="to" type="datetime-local" />
        </label>
        <div class="actions">
          <button type="submit" class="primary">
            Filter
          </button>
        </div>
      </form>
      <ErrorBanner error={error} />
      <div class="scroll">
        <table>
          <thead>
            <tr>
              <th scope="col">Time</th>
              <th scope="col">Actor</th>
              <th scope="col">Call</th>
              <th scope="col">Target</th>
              <th scope="col">Result</th>
            </tr>
          </thead>
          <tbody>
            {events.map((e) => (
              <tr key={e.id}>
                <td>{e.time ? timestampDate(e.time).toLocaleString() : ""}</td>
                <td>
                  {e.actorKind} <code>{e.actorId}</code>
                </td>
                <td>{e.method.replace(/^remotegpu\.v1\./, "")}</td>
                <td>
                  <code>{e.targetId}</code>
                </td>
                <td class={e.code === "ok" ? "" : "error-text"}>{e.code}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {next && (
        <button type="button" onClick={() => void load(next, events)}>
          Load more
        </button>
      )}
      {events.length === 0 && !error && <p class="hint">No events match.</p>}
    </Card>
  );
}
