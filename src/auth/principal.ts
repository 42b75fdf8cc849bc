import type { WorkspaceRole } from "./api-token.js";

/** Who is calling, as established from the bearer token. */
export type Principal =
  | { kind: "admin"; tokenId: string }
  | { kind: "host"; tokenId: string; hostId: string }
  | { kind: "workspace"; tokenId: string; workspaceId: string; role: WorkspaceRole };
