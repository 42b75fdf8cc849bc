import type { ComponentChildren } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { RemoteGpuError } from "@remotegpu/sdk/web";
import { describeError } from "./api.js";

/** A refused or failed call, as the server worded it. */
export function ErrorBanner({ error }: { error: unknown }) {
  if (error === undefined || error === null) return null;
  return (
    <p class="error" role="alert">
      {describeError(error)}
    </p>
  );
}

/** Codes a retry does not mend: the page shows them and stops. */
const FINAL = new Set(["unauthenticated", "permission_denied", "not_found", "invalid_argument", "failed_precondition"]);

/**
 * Runs `follow` (a watch or a log stream) while the component is shown, `deps` hold and the tab is
 * visible (a hidden tab gives its connections back: browsers allow six per origin over HTTP/1.1).
 * A stream that fails is followed again, after 1 s, then longer, up to 30 s, unless its error is one
 * a retry cannot mend. `follow` calls `ok` once it hears from the server; the last failure comes
 * back until then, for the page to show.
 */
export function useStream(follow: (signal: AbortSignal, ok: () => void) => Promise<void>, deps: unknown[]): unknown {
  const [error, setError] = useState<unknown>(undefined);
  useEffect(() => {
    const abort = new AbortController();
    const { signal } = abort;
    void (async () => {
      for (let failures = 0; !signal.aborted; ) {
        await visible(signal);
        const attempt = new AbortController();
        const stop = () => attempt.abort();
        signal.addEventListener("abort", stop);
        const hidden = () => document.hidden && attempt.abort();
        document.addEventListener("visibilitychange", hidden);
        try {
          await follow(attempt.signal, () => {
            failures = 0;
            setError(undefined);
          });
          if (!attempt.signal.aborted) return; // the stream ended by itself (a finished log)
        } catch (err) {
          if (attempt.signal.aborted) continue;
          setError(err);
          if (err instanceof RemoteGpuError && FINAL.has(err.codeName)) return;
          failures++;
          await sleep(Math.min(30_000, 1000 * 2 ** (failures - 1)), signal);
        } finally {
          signal.removeEventListener("abort", stop);
          document.removeEventListener("visibilitychange", hidden);
        }
      }
    })();
    return () => abort.abort();
  }, deps);
  return error;
}

function visible(signal: AbortSignal): Promise<void> {
  if (!document.hidden) return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (document.hidden && !signal.aborted) return;
      document.removeEventListener("visibilitychange", check);
      resolve();
    };
    document.addEventListener("visibilitychange", check);
    signal.addEventListener("abort", check, { once: true });
  });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** A call made from a button: whether it is running, how it last failed, and the call itself. */
function useAction(action: () => Promise<unknown>): [boolean, unknown, () => Promise<void>] {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  const run = async () => {
    setBusy(true);
    setError(undefined);
    try {
      await action();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return [busy, error, run];
}

/** A button that asks first, in a modal dialog (keyboard: Tab between the answers, Escape to cancel). */
export function ConfirmButton({
  label,
  question,
  onConfirm,
  danger = false,
}: {
  label: string;
  question: string;
  onConfirm: () => Promise<void>;
  danger?: boolean;
}) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [busy, error, run] = useAction(onConfirm);
  const confirm = () => {
    dialog.current?.close();
    void run();
  };
  return (
    <span class="confirm">
      <button type="button" class={danger ? "danger" : ""} disabled={busy} onClick={() => dialog.current?.showModal()}>
        {label}
      </button>
      <dialog ref={dialog} aria-label={label}>
        <p>{question}</p>
        <div class="actions">
          <button type="button" onClick={() => dialog.current?.close()}>
            Cancel
          </button>
          <button type="button" class={danger ? "danger" : "primary"} onClick={confirm}>
            {label}
          </button>
        </div>
      </dialog>
      <ErrorBanner error={error} />
    </span>
  );
}

/** A button whose action is a call; it shows the call's error beside itself. */
export function ActionButton({ label, action }: { label: string; action: () => Promise<unknown> }) {
  const [busy, error, run] = useAction(action);
  return (
    <span class="confirm">
      <button type="button" disabled={busy} onClick={run}>
        {label}
      </button>
      <ErrorBanner error={error} />
    </span>
  );
}

/** Usage against a limit, as a labelled bar; without a limit, the usage alone. */
export function UsageBar({ label, used, limit, unit = "" }: { label: string; used: number; limit?: number; unit?: string }) {
  const text = `${format(used)}${unit}${limit === undefined ? " (no limit)" : ` of ${format(limit)}${unit}`}`;
  return (
    <div class="usage">
      <span>{label}</span>
      <meter min={0} max={limit || 1} value={limit === undefined ? 0 : used} high={(limit ?? 1) * 0.9} aria-label={`${label}: ${text}`} />
      <span>{text}</span>
    </div>
  );
}

export function Card({ title, children, actions }: { title: string; children: ComponentChildren; actions?: ComponentChildren }) {
  return (
    <section class="card" aria-label={title}>
      <header>
        <h2>{title}</h2>
        {actions}
      </header>
      {children}
    </section>
  );
}

export function format(n: number): string {
  return Number.isInteger(n) ? n.toLocaleString("en") : n.toFixed(1);
}

export const GiB = 1024 ** 3;

export function bytes(n: bigint | number | undefined): string {
  if (n === undefined) return "–";
  const v = Number(n);
  if (v >= GiB) return `${(v / GiB).toFixed(1)} GiB`;
  if (v >= 1024 ** 2) return `${(v / 1024 ** 2).toFixed(0)} MiB`;
  return `${v} B`;
}

export function ago(date: Date | undefined): string {
  if (!date) return "never";
  const s = Math.max(0, Math.round((Date.now() - date.getTime()) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return date.toLocaleString();
}
