// Validate one glTF/GLB file with the Khronos glTF-Validator (npm "gltf-validator"); print the report as JSON.
// Usage: node tests/gltf_validate.mjs <file>   (module resolved from .ci/node via NODE_PATH or a relative import)
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", ".ci", "node", "package.json"));
const validator = require("gltf-validator");

const file = process.argv[2];
const report = await validator.validateBytes(new Uint8Array(readFileSync(file)), {
  uri: path.basename(file),
  maxIssues: 200,
});
process.stdout.write(JSON.stringify(report));
