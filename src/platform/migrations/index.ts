import { Migration20261130214855_initial } from "./Migration20261130214855_initial.js";
import { Migration20261130222022_telemetry } from "./Migration20261130222022_telemetry.js";
import { Migration20261201000000_audit } from "./Migration20261201000000_audit.js";
import { Migration20261201001000_environments } from "./Migration20261201001000_environments.js";
import { Migration20261201002000_storage } from "./Migration20261201002000_storage.js";
import { Migration20261201003000_indexes } from "./Migration20261201003000_indexes.js";
import { Migration20261206000000_agent_runtime } from "./Migration20261206000000_agent_runtime.js";
import { Migration20261207000000_runtime_unavailable } from "./Migration20261207000000_runtime_unavailable.js";
import { Migration20261210000000_node_hosts } from "./Migration20261210000000_node_hosts.js";
import { Migration20261211000000_request_hash } from "./Migration20261211000000_request_hash.js";
import { Migration20261212000000_gpu_list_indexes } from "./Migration20261212000000_gpu_list_indexes.js";
import { Migration20261214000000_audit_detail } from "./Migration20261214000000_audit_detail.js";
import { Migration20261215000000_free_gpu_counts } from "./Migration20261215000000_free_gpu_counts.js";
import { Migration20261216000000_ssh_host_keys } from "./Migration20261216000000_ssh_host_keys.js";
import { Migration20261217000000_mig_slices } from "./Migration20261217000000_mig_slices.js";
import { Migration20261218000000_gpu_list_counts } from "./Migration20261218000000_gpu_list_counts.js";
import { Migration20261219000000_gpu_models_memory } from "./Migration20261219000000_gpu_models_memory.js";

// Every migration, in order. Listed by hand so they run the same from TypeScript and from dist/.
export const migrations = [
  { name: "Migration20261130214855_initial", class: Migration20261130214855_initial },
  { name: "Migration20261130222022_telemetry", class: Migration20261130222022_telemetry },
  { name: "Migration20261201000000_audit", class: Migration20261201000000_audit },
  { name: "Migration20261201001000_environments", class: Migration20261201001000_environments },
  { name: "Migration20261201002000_storage", class: Migration20261201002000_storage },
  { name: "Migration20261201003000_indexes", class: Migration20261201003000_indexes },
  { name: "Migration20261206000000_agent_runtime", class: Migration20261206000000_agent_runtime },
  { name: "Migration20261207000000_runtime_unavailable", class: Migration20261207000000_runtime_unavailable },
  { name: "Migration20261210000000_node_hosts", class: Migration20261210000000_node_hosts },
  { name: "Migration20261211000000_request_hash", class: Migration20261211000000_request_hash },
  { name: "Migration20261212000000_gpu_list_indexes", class: Migration20261212000000_gpu_list_indexes },
  { name: "Migration20261214000000_audit_detail", class: Migration20261214000000_audit_detail },
  { name: "Migration20261215000000_free_gpu_counts", class: Migration20261215000000_free_gpu_counts },
  { name: "Migration20261216000000_ssh_host_keys", class: Migration20261216000000_ssh_host_keys },
  { name: "Migration20261217000000_mig_slices", class: Migration20261217000000_mig_slices },
  { name: "Migration20261218000000_gpu_list_counts", class: Migration20261218000000_gpu_list_counts },
  { name: "Migration20261219000000_gpu_models_memory", class: Migration20261219000000_gpu_models_memory },
];
