import type { ComponentChildren } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { describeError, isCancel } from "./api.js";

/** A refused or failed call, as the server worded it. */
export function ErrorBanner({ error }: { error: unknown }) {
  if (error === undefined || error === null) return null;
  return (
    <p class="error" role="alert">
      {describeError(error)}
    </p>
  );
}

/**
 * Runs `follow` (a watch or a log stream) while the component is shown and `deps` hold, and again
 * after it fails, 2 s later; what the last failure was comes back for the page to show.
 */
export function useStream(follow: (signal: AbortSignal) => Promise<void>, deps: unknown[]): unknown {
  const [error, setError] = useState<unknown>(undefined);
  useEffect(() => {
    const abort = new AbortController();
    const { signal } = abort;
    void (async () => {
      while (!signal.aborted) {
        try {
          await follow(signal);
          setError(undefined);
          return;
        } catch (err) {
          if (isCancel(err, signal)) return;
          setError(err);
          await new Promise((resolve) => setTimeout(resolve, 2000));
        }
      }
    })();
    return () => abort.abort();
  }, deps);
  return error;
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
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  const confirm = async () => {
    dialog.current?.close();
    setBusy(true);
    setError(undefined);
    try {
      await onConfirm();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
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
