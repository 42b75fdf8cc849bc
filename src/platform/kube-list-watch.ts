import { setTimeout as sleep } from "node:timers/promises";
import { type KubeConfig, Watch } from "@kubernetes/client-node";
import type { Logger } from "./logger.js";

export type KubeChange = "ADDED" | "MODIFIED" | "DELETED";

/** One kind of Kubernetes object to keep up with. */
export interface ListWatchTarget<T> {
  /** What it is, for logs: "nodes". */
  what: string;
  /** Where its watches go: "/api/v1/nodes". */
  path: string;
  labelSelector?: string;
  list(): Promise<{ items: T[]; metadata?: { resourceVersion?: string } }>;
  /** After each (re-)list: everything there is now. */
  replaced(items: T[]): void;
  changed(type: KubeChange, item: T): void;
}

const BASE_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 30_000;
/** A watch that ends sooner than this (refused, cut by a proxy) waits before the next, so it cannot spin. */
const SHORT_WATCH_MS = 5_000;

interface WatchEnd {
  /** 410 Gone: the resourceVersion is too old to resume from; list again. */
  gone: boolean;
  /** Why it ended, if not cleanly; undefined when the server ended it or it was idle too long. */
  error?: unknown;
}

/**
 * List, then watch from the list's resourceVersion with bookmarks on, for as long as it runs. A watch
 * that ends cleanly or goes quiet resumes from the last resourceVersion seen (events or bookmarks);
 * 410 Gone lists again at once; any other failure lists again after a backoff that doubles up to 30 s.
 */
export class KubeListWatch<T extends { metadata?: { resourceVersion?: string } }> {
  private stopping?: AbortController;
  private abortWatch?: AbortController;
  private running?: Promise<void>;

  constructor(
    private readonly kc: KubeConfig,
    private readonly target: ListWatchTarget<T>,
    private readonly logger: Logger,
  ) {}

  start(): void {
    if (this.running) return;
    const stopping = new AbortController();
    this.stopping = stopping;
    this.running = this.loop(stopping.signal);
  }

  /** Ends the watch and waits for the loop to finish. */
  async stop(): Promise<void> {
    this.stopping?.abort();
    this.abortWatch?.abort();
    await this.running;
    this.running = undefined;
  }

  private async loop(signal: AbortSignal): Promise<void> {
    let resourceVersion: string | undefined;
    let backoffMs = BASE_BACKOFF_MS;
    const pause = async () => {
      await sleep(backoffMs, undefined, { signal }).catch(() => undefined);
      backoffMs = Math.min(MAX_BACKOFF_MS, backoffMs * 2);
    };
    while (!signal.aborted) {
      try {
        if (resourceVersion === undefined) {
          const list = await this.target.list();
          if (signal.aborted) return;
          this.target.replaced(list.items);
          resourceVersion = list.metadata?.resourceVersion ?? "";
        }
        const opened = Date.now();
        const end = await this.watch(resourceVersion, (rv) => (resourceVersion = rv), signal);
        if (signal.aborted) return;
        if (end.gone) {
          resourceVersion = undefined;
          continue;
        }
        if (end.error !== undefined) {
          this.logger.warn({ error: describe(end.error) }, `Kubernetes ${this.target.what} watch failed; listing again`);
          resourceVersion = undefined;
          await pause();
        } else if (Date.now() - opened < SHORT_WATCH_MS) {
          await pause();
        } else {
          backoffMs = BASE_BACKOFF_MS;
        }
      } catch (err) {
        if (signal.aborted) return;
        this.logger.warn({ error: describe(err) }, `listing Kubernetes ${this.target.what} failed; retrying`);
        resourceVersion = undefined;
        await pause();
      }
    }
  }

  private watch(from: string, seen: (rv: string) => void, signal: AbortSignal): Promise<WatchEnd> {
    return new Promise<WatchEnd>((resolve) => {
      let gone = false;
      const query = {
        labelSelector: this.target.labelSelector,
        resourceVersion: from,
        allowWatchBookmarks: true,
        // The server ends it after 5 to 10 minutes (spread out, as client-go does); it resumes from where it was.
        timeoutSeconds: 300 + Math.floor(Math.random() * 300),
      };
      const onEvent = (type: string, object: T & { code?: number }) => {
        if (type === "ERROR") {
          gone ||= object?.code === 410;
          return;
        }
        const rv = object?.metadata?.resourceVersion;
        if (rv) seen(rv);
        if (type !== "ADDED" && type !== "MODIFIED" && type !== "DELETED") return; // BOOKMARK: only its resourceVersion counts
        try {
          this.target.changed(type, object);
        } catch (err) {
          this.logger.error({ err }, `handling a Kubernetes ${this.target.what} event failed`);
        }
      };
      const onDone = (err: unknown) => {
        const status = (err as { statusCode?: number; code?: number } | null)?.statusCode ?? (err as { code?: number } | null)?.code;
        // client-node ends a watch that stayed silent for 30 s with a TimeoutError: nothing failed, it resumes.
        const quiet = err instanceof Error && err.name === "TimeoutError";
        resolve({ gone: gone || status === 410, error: err && !quiet && !gone && status !== 410 ? err : undefined });
      };
      new Watch(this.kc).watch(this.target.path, query, onEvent, onDone).then(
        (abort) => {
          this.abortWatch = abort;
          if (signal.aborted) abort.abort();
        },
        (err: unknown) => resolve({ gone: false, error: err }),
      );
    });
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
