/**
 * Changes other replicas made, on their way to this replica's watchers. Each batch is read back
 * from the database together (the newest state of every id in it), one batch at a time, so a slow
 * read can never publish an older state after a newer one. A batch that fails calls `lost`: the
 * watchers must then start over, since they would otherwise miss a change.
 */
export class ChangeRelay<C> {
  private pending = new Map<string, C>();
  private running = false;

  constructor(
    private readonly publish: (batch: Map<string, C>) => Promise<void>,
    private readonly lost: (err: unknown) => void,
  ) {}

  add(id: string, change: C): void {
    this.pending.delete(id); // set again at the end: a batch keeps the order of the latest changes
    this.pending.set(id, change);
    if (this.running) return;
    this.running = true;
    void (async () => {
      while (this.pending.size > 0) {
        const batch = this.pending;
        this.pending = new Map();
        await this.publish(batch).catch(this.lost);
      }
      this.running = false;
    })();
  }
}
