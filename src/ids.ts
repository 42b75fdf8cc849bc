import { InvalidArgumentError } from "./errors.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Resource ids are UUIDs; anything else is refused before it reaches the database. */
export function checkId(field: string, id: string): string {
  if (id === "") throw InvalidArgumentError.field(field, "required");
  if (!UUID.test(id)) throw InvalidArgumentError.field(field, `"${id.slice(0, 64)}" is not a valid id`);
  return id.toLowerCase();
}
