import {
  ApiTokenRole,
  createRemoteGpuClient,
  listAll,
  RemoteGpuError,
  type GetCallerResponse,
  type RemoteGpuClient,
} from "@remotegpu/sdk/web";

/** Who is signed in: the client that calls as them, and what their token is. */
export interface Session {
  client: RemoteGpuClient;
  caller: GetCallerResponse;
  /** The workspace role ("admin", "member", "viewer"), or "cluster-admin". */
  role: Role;
}

export type Role = "cluster-admin" | "admin" | "member" | "viewer";

const TOKEN_KEY = "remotegpu.token";

/** A client of the server that served the page, calling with `token`. */
function clientFor(token: string): RemoteGpuClient {
  return createRemoteGpuClient({ baseUrl: location.origin, token, timeoutMs: 30_000 });
}

/** Signs in: the server says who the token is, or refuses it (the error carries its message). */
export async function signIn(token: string): Promise<Session> {
  const client = clientFor(token.trim());
  const caller = await client.workspaces.getCaller({});
  // Kept for this browser tab only: closing it signs out.
  sessionStorage.setItem(TOKEN_KEY, token.trim());
  const roles: Partial<Record<ApiTokenRole, Role>> = { [ApiTokenRole.ADMIN]: "admin", [ApiTokenRole.MEMBER]: "member" };
  const role: Role = caller.clusterAdmin ? "cluster-admin" : (roles[caller.role] ?? "viewer");
  return { client, caller, role };
}

export function savedToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function signOut(): void {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** May this role change things in a workspace (create, start, stop, delete)? */
export function canOperate(role: Role): boolean {
  return role !== "viewer";
}

/** What a failed call says to a person: the server's own message and its code, never a stack. */
export function describeError(err: unknown): string {
  if (err instanceof RemoteGpuError) return `${err.message} (${err.codeName})`;
  if (err instanceof Error) return err.message;
  return String(err);
}

/** Every item of a paginated list, in pages of `pageSize`. */
export async function everything<T>(pages: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = [];
  for await (const item of pages) items.push(item);
  return items;
}

export { listAll };
