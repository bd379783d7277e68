// Validates Kubernetes resources (a JSON array on stdin) against their published schemas: the
// Kubernetes OpenAPI for NetworkPolicy, Cilium's CRD for CiliumNetworkPolicy. Prints one line
// per resource, `ok KIND NAME` or `invalid KIND NAME: why`; exits 1 if any is invalid.
import { NetworkPolicy } from "kubernetes-models/networking.k8s.io/v1/NetworkPolicy";
import { CiliumNetworkPolicy } from "@kubernetes-models/cilium/cilium.io/v2/CiliumNetworkPolicy";

const models = { NetworkPolicy, CiliumNetworkPolicy };
let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = false;
for (const resource of JSON.parse(input)) {
  const Model = models[resource.kind];
  const name = resource.metadata?.name;
  if (!Model) {
    console.log(`invalid ${resource.kind} ${name}: no schema for this kind`);
    failed = true;
    continue;
  }
  try {
    new Model(resource).validate();
    console.log(`ok ${resource.kind} ${name}`);
  } catch (e) {
    console.log(`invalid ${resource.kind} ${name}: ${e.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
