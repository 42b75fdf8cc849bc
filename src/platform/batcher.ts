/**
 * Gathers calls into batches that share one round trip: under load (a fleet of agents reconnecting
 * after a restart) many calls wait together and one statement serves them all; alone, a call runs
 * after the current turn of the event loop. At most `concurrency` batches run at once; calls that
 * arrive meanwhile wait for the next one, which is how batches grow with the load.
 *
 * `run` answers each input at the same position: a value, or an Error that rejects that call only.
 * A `run` that throws rejects every call of its batch.
 */
export class Batcher<I, O> {
  private waiting: { input: I; resolve: (o: O) => void; reject: (err: unknown) => void }[] = [];
  private running = 0;
  private scheduled = false;

  constructor(
    private readonly run: (inputs: I[]) => Promise<(O | Error)[]>,
    private readonly options: { max: number; concurrency: number } = { max: 500, concurrency: 2 },
  ) {}

  add(input: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.waiting.push({ input, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.waiting.length === 0 || this.running >= this.options.concurrency) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.next();
    });
  }

  private next(): void {
    if (this.waiting.length === 0 || this.running >= this.options.concurrency) return;
    const batch = this.waiting.splice(0, this.options.max);
    this.running++;
    this.run(batch.map((b) => b.input))
      .then(
        (outputs) =>
          batch.forEach((b, i) => {
            const o = outputs[i] as O | Error;
            if (o instanceof Error) b.reject(o);
            else b.resolve(o);
          }),
        (err: unknown) => {
          for (const b of batch) b.reject(err);
        },
      )
      .finally(() => {
        this.running--;
        this.schedule();
      });
    this.schedule();
  }
}
