import type { CallOptions } from "@connectrpc/connect";

/** A request of a paginated list: it takes the `next_page_token` of the previous page. */
export interface PageRequest {
  pageToken?: string;
}

/** A response of a paginated list. */
export interface PageResponse {
  nextPageToken: string;
}

type DataKeys<R> = Exclude<keyof R, `$${string}`>;

/** The element type of the list field of a response: `Host` for `ListHostsResponse`, `WorkspaceFile` for `ListFilesResponse`. */
export type ListItem<R> = { [K in DataKeys<R>]-?: NonNullable<R[K]> extends readonly (infer T)[] ? T : never }[DataKeys<R>];

/** Options of {@link listAll}: call options for every page, and where the items are. */
export interface ListAllOptions<R> extends CallOptions {
  /**
   * Picks the items out of a page.
   * @default the response's one list field (`hosts`, `gpus`, `workspaces`, `environments`, `files`, …)
   */
  items?: (response: R) => readonly ListItem<R>[];
}

/**
 * Iterates over every item of a paginated list, fetching pages as the loop asks for them:
 *
 * ```ts
 * for await (const host of listAll(client.hosts.listHosts, { labelSelector: "zone=a", pageSize: 200 })) {
 *   console.log(host.name);
 * }
 * ```
 *
 * Works with any method that takes `page_token` and returns `next_page_token`. The request's other
 * fields (filters, `pageSize`) are sent with every page; breaking out of the loop fetches no more.
 *
 * @param list A list method of a client, e.g. `client.gpus.listGpus`.
 * @param request The first page's request; a `pageToken` in it starts from that page.
 * @param options Call options used for each page (`signal`, `timeoutMs`, `headers`), and `items`.
 */
export async function* listAll<Req extends PageRequest, Res extends PageResponse>(
  list: (request: Req, options?: CallOptions) => Promise<Res>,
  request: Req,
  options: ListAllOptions<Res> = {},
): AsyncGenerator<ListItem<Res>, void, undefined> {
  const { items = listField, ...callOptions } = options;
  let token = request.pageToken ?? "";
  for (;;) {
    const page = await list({ ...request, pageToken: token }, callOptions);
    yield* items(page);
    if (page.nextPageToken === "") return;
    if (page.nextPageToken === token) throw new Error(`listAll: the server returned the same page token twice (${token})`);
    token = page.nextPageToken;
  }
}

function listField<R>(response: R): readonly ListItem<R>[] {
  const lists = Object.entries(response as object).filter(([key, value]) => !key.startsWith("$") && Array.isArray(value));
  if (lists.length !== 1) throw new TypeError(`listAll: the response has ${lists.length} list fields; pass options.items to pick one`);
  return lists[0]![1] as ListItem<R>[];
}
