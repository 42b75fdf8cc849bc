import { UniqueConstraintViolationException } from "@mikro-orm/core";

/** Runs `work`; a unique-constraint violation becomes the domain error `toError` gives for that constraint. */
export async function onUniqueViolation<T>(work: () => Promise<T>, toError: (constraint: string) => Error | undefined): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (err instanceof UniqueConstraintViolationException) {
      const constraint = (err as { constraint?: string }).constraint ?? "";
      const mapped = toError(constraint);
      if (mapped) throw mapped;
    }
    throw err;
  }
}
