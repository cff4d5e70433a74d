// Validates the prometheus-operator objects of a `kubectl kustomize` build (read as JSON from stdin, a List) against
// the schemas of @kubernetes-models/prometheus-operator. Prints one line per object; exits 1 on any invalid one.
// Usage (tests/deliverables/test_kubernetes.py does this): NODE_PATH=<node_modules with the package> \
//   node deploy/kubernetes/validate-crds.mjs < build.json
import { readFileSync } from "node:fs";
import path from "node:path";

const modules = process.env.NODE_PATH;
const base = path.join(modules, "@kubernetes-models", "prometheus-operator", "monitoring.coreos.com", "v1");
const kinds = ["ServiceMonitor", "PodMonitor", "PrometheusRule"];
const models = {};
for (const kind of kinds) {
  models[kind] = (await import(path.join(base, `${kind}.js`)))[kind];
}
const doc = JSON.parse(readFileSync(0, "utf8"));
const items = doc.kind === "List" ? doc.items : [doc];
let bad = 0;
let seen = 0;
for (const item of items) {
  const Model = models[item.kind];
  if (!Model) continue;
  seen += 1;
  try {
    new Model(item).validate();
    console.log(`valid ${item.kind}/${item.metadata.name}`);
  } catch (err) {
    bad += 1;
    console.log(`INVALID ${item.kind}/${item.metadata.name}: ${err.message}`);
  }
}
if (seen === 0) {
  console.log("no prometheus-operator objects found");
  process.exit(1);
}
process.exit(bad ? 1 : 0);
