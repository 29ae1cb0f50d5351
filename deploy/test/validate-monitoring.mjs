// Validates Prometheus Operator objects (monitoring.coreos.com/v1 PodMonitor, ServiceMonitor,
// PrometheusRule) the way a cluster with the operator's CRDs would: types, required fields and
// enums with the models of @kubernetes-models/prometheus-operator (`validate()`), and, since
// those models accept any extra field while `kubectl apply` refuses unknown fields, every field
// name against the models' TypeScript declarations.
//
//   node deploy/test/validate-monitoring.mjs PACKAGE_DIR OBJECTS.json
//
// PACKAGE_DIR is node_modules/@kubernetes-models/prometheus-operator (scripts/test.sh installs
// it under $MEMDS_TEST_TOOLS/node); OBJECTS.json is a JSON array of objects. Prints one line
// per object, `ok KIND/NAME` or `invalid KIND/NAME: why`, and exits 1 if any is invalid or of
// another kind. memds-server/tests/deploy.rs runs it.

import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

const [packageDir, objectsFile] = process.argv.slice(2);
if (!packageDir || !objectsFile) {
  console.error("usage: validate-monitoring.mjs PACKAGE_DIR OBJECTS.json");
  process.exit(2);
}
const modelsDir = join(packageDir, "monitoring.coreos.com", "v1");
const nodeModules = dirname(dirname(packageDir));
const models = await import(pathToFileURL(join(modelsDir, "index.js")).href);
const KINDS = ["PodMonitor", "ServiceMonitor", "PrometheusRule"];

// The properties of the interface a .d.ts file declares: name -> the .d.ts file of its type
// (or of its array's element type), or null for a leaf (string, number, map, alias).
const declarations = new Map();
function declaration(file) {
  if (declarations.has(file)) return declarations.get(file);
  const text = readFileSync(file, "utf8");
  const imports = new Map();
  for (const m of text.matchAll(/^import \{ (\w+) \} from "([^"]+)";$/gm)) {
    imports.set(m[1], m[2]);
  }
  const resolve = (type) => {
    const source = imports.get(type);
    if (source === undefined) throw new Error(`${file}: type ${type} is not imported`);
    const bare = source.replace(/\.js$/, "");
    const path = source.startsWith(".") ? join(dirname(file), `${bare}.d.ts`) : join(nodeModules, `${bare}.d.ts`);
    if (!existsSync(path)) throw new Error(`${file}: cannot find the declaration of ${type} (${path})`);
    return path;
  };
  const props = new Map();
  const head = text.match(/^export interface \w+(?: extends ([\w, ]+))? \{$/m);
  if (head) {
    for (const base of (head[1] ?? "").split(",").map((s) => s.trim()).filter(Boolean)) {
      if (base === "TypeMeta") continue;
      for (const [k, v] of declaration(resolve(base)).props) props.set(k, v);
    }
    const body = text.slice(head.index + head[0].length, text.indexOf("\n}", head.index));
    for (const m of body.matchAll(/^ {4}"([^"]+)"\??: (.*?);?$/gm)) {
      const t = m[2].match(/^(?:Array<)?(I\w+)>?(?: \| null)?$/);
      props.set(m[1], t ? resolve(t[1]) : null);
    }
  }
  const d = { interface: Boolean(head), props };
  declarations.set(file, d);
  return d;
}

// Field names the declarations do not know, as paths.
function unknownFields(value, file, path, out) {
  if (file === null || value === null || typeof value !== "object") return out;
  const d = declaration(file);
  if (!d.interface) return out;
  if (Array.isArray(value)) {
    value.forEach((v, i) => unknownFields(v, file, `${path}[${i}]`, out));
    return out;
  }
  for (const [k, v] of Object.entries(value)) {
    if (!d.props.has(k)) out.push(`${path}.${k}`);
    else unknownFields(v, d.props.get(k), `${path}.${k}`, out);
  }
  return out;
}

const objects = JSON.parse(readFileSync(objectsFile, "utf8"));
let failed = false;
for (const obj of objects) {
  const name = `${obj?.kind}/${obj?.metadata?.name}`;
  try {
    if (obj?.apiVersion !== "monitoring.coreos.com/v1" || !KINDS.includes(obj?.kind)) {
      throw new Error(`not one of monitoring.coreos.com/v1 ${KINDS.join(", ")}`);
    }
    new models[obj.kind](obj).validate();
    const unknown = unknownFields(obj, join(modelsDir, `${obj.kind}.d.ts`), "", []);
    if (unknown.length > 0) throw new Error(`unknown fields ${unknown.join(", ")}`);
    console.log(`ok ${name}`);
  } catch (e) {
    failed = true;
    console.log(`invalid ${name}: ${String(e.message ?? e).replaceAll("\n", " ")}`);
  }
}
process.exit(failed ? 1 : 0);
