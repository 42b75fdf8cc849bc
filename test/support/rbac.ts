import { readFile } from "node:fs/promises";
import { loadAllYaml } from "@kubernetes/client-node";

/** The requests (as the Kubernetes API test server records them) that deploy/rbac.yaml's ClusterRole does not allow, as "verb group/resource". */
export async function deniedByRbac(requests: { method: string; path: string; query: string }[]): Promise<string[]> {
  const role = loadAllYaml(await readFile(new URL("../../deploy/rbac.yaml", import.meta.url), "utf8")).find(
    (d) => d.kind === "ClusterRole",
  );
  const rules: { apiGroups: string[]; resources: string[]; verbs: string[] }[] = role.rules;
  const denied = new Set<string>();
  for (const r of requests) {
    const m = /^\/(?:api\/v1|apis\/([^/]+)\/v1)\/(?:namespaces\/[^/]+\/)?([a-z]+)(?:\/([^/]+))?(?:\/([a-z]+))?$/.exec(r.path);
    if (!m) continue; // discovery
    const [, group = "", plural, name, sub] = m;
    const resource = sub ? `${plural}/${sub}` : plural;
    const verb =
      r.method === "GET"
        ? name
          ? "get"
          : r.query.includes("watch=true")
            ? "watch"
            : "list"
        : ({ POST: "create", PUT: "update", PATCH: "patch", DELETE: "delete" } as Record<string, string>)[r.method];
    if (!rules.some((rule) => rule.apiGroups.includes(group) && rule.resources.includes(resource) && rule.verbs.includes(verb!)))
      denied.add(`${verb} ${group}/${resource}`);
  }
  return [...denied];
}
