import { KubeConfig } from "@kubernetes/client-node";

/** A kubeconfig file, or the pod's service account when running in the cluster. */
export function kubeConfig(file: string | undefined): KubeConfig {
  const kc = new KubeConfig();
  if (file) kc.loadFromFile(file);
  else kc.loadFromCluster();
  return kc;
}
