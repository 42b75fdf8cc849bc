import { InvalidArgumentError } from "./errors.js";

// The one shape of a resource id. Case is ignored: UUIDs are hex, and PostgreSQL's uuid type reads
// either case, so an id a client upper-cased still names the same row.
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Whether `value` has the shape of a resource id (a UUID, in either case). */
export function isId(value: unknown): boolean {
  return typeof value === "string" && UUID.test(value);
}

/** Resource ids are UUIDs; anything else is refused before it reaches the database. Returns it lower-cased. */
export function checkId(field: string, id: string): string {
  if (id === "") throw InvalidArgumentError.field(field, "required");
  if (!isId(id)) throw InvalidArgumentError.field(field, `"${id.slice(0, 64)}" is not a valid id`);
  return id.toLowerCase();
}
