// Prints, as JSON, the key tree of config.yaml that Continue's own schema package accepts:
// `configYamlSchema` of @continuedev/config-yaml (packages/config-yaml/src/schemas/index.ts), walked
// through zod's definitions. zod strips unknown keys, so the package's own validation cannot see a
// misplaced or misspelled key; the continue role checks every key of its rendered file against this
// tree instead. Usage: node config_keys.mjs PATH_OF_@continuedev/config-yaml
import { pathToFileURL } from "node:url";
import { join } from "node:path";

// Run as a file or with `node --input-type=module -e`: the package path is the last argument.
const pkg = process.argv.length > 1 ? process.argv[process.argv.length - 1] : "";
if (!pkg || pkg.endsWith("config_keys.mjs")) {
  console.error("usage: config_keys.mjs PATH_OF_@continuedev/config-yaml");
  process.exit(2);
}
const { configYamlSchema } = await import(pathToFileURL(join(pkg, "dist", "index.js")).href);

// {"object": {key: node}} | {"record": node} | {"array": node} | {"union": [node]} | {"leaf": true}
function walk(s, depth) {
  if (!s || !s._def || depth > 40) return { leaf: true };
  const d = s._def;
  switch (d.typeName) {
    case "ZodObject": {
      const shape = typeof d.shape === "function" ? d.shape() : d.shape;
      const out = {};
      for (const [k, v] of Object.entries(shape)) out[k] = walk(v, depth + 1);
      return { object: out };
    }
    case "ZodOptional":
    case "ZodNullable":
    case "ZodDefault":
    case "ZodCatch":
    case "ZodReadonly":
    case "ZodBranded":
      return walk(d.innerType ?? d.type, depth + 1);
    case "ZodEffects":
      return walk(d.schema, depth + 1);
    case "ZodLazy":
      return walk(d.getter(), depth + 1);
    case "ZodPipeline":
      return walk(d.in, depth + 1);
    case "ZodArray":
      return { array: walk(d.type, depth + 1) };
    case "ZodTuple":
      return { leaf: true };
    case "ZodRecord":
      return { record: walk(d.valueType, depth + 1) };
    case "ZodUnion":
    case "ZodDiscriminatedUnion": {
      const opts = Array.isArray(d.options) ? d.options : [...d.options.values()];
      return { union: opts.map((o) => walk(o, depth + 1)) };
    }
    case "ZodIntersection": {
      // metadata: a record of strings and an object: any key is read.
      const l = walk(d.left, depth + 1), r = walk(d.right, depth + 1);
      if (l.record || r.record) return { record: { leaf: true } };
      return { object: { ...(l.object ?? {}), ...(r.object ?? {}) } };
    }
    default:
      return { leaf: true };
  }
}

process.stdout.write(JSON.stringify(walk(configYamlSchema, 0)));
