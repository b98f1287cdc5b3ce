// Validates KEDA objects (a JSON list on stdin) against @kubernetes-models/keda's schemas, generated
// from KEDA's CRDs. argv[2]: the folder holding node_modules (scripts/keda-schema.sh prints it).
const path = require("path");
const root = path.join(process.argv[2], "node_modules", "@kubernetes-models", "keda");
const kinds = { ScaledObject: require(path.join(root, "keda.sh", "v1alpha1", "ScaledObject")).ScaledObject };
const errors = [];
for (const object of JSON.parse(require("fs").readFileSync(0, "utf8"))) {
  const Kind = kinds[object.kind];
  if (!Kind) { errors.push(`${object.kind}: no schema`); continue; }
  try { new Kind(object).validate(); } catch (e) { errors.push(`${object.metadata.name}: ${e.message}`); }
}
console.log(JSON.stringify(errors));
